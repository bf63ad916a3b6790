//! `pqmesh-test-app NAME HTTP_ADDR TCP_ADDR`: the unmodified app of the network-namespace suite.

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [name, http, tcp] = args.as_slice() else {
        eprintln!("usage: pqmesh-test-app NAME HTTP_ADDR TCP_ADDR");
        std::process::exit(2);
    };
    let http = tokio::net::TcpListener::bind(http).await?;
    let tcp = tokio::net::TcpListener::bind(tcp).await?;
    let stats = std::sync::Arc::new(pqmesh_tests::http_app::AppStats::default());
    tokio::spawn(pqmesh_tests::http_app::serve_tcp_echo(tcp));
    pqmesh_tests::http_app::serve_http(http, name.clone(), stats).await;
    Ok(())
}
