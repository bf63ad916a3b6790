// Java echo app of the differential suite (tests/tests/e2e/differential.rs): the JDK's own
// com.sun.net.httpserver. Every request is answered with, and logged to stdout as, one
// `DIFF {json}` line: getRequestMethod(), getRequestURI().getPath() and getRawPath(),
// getRequestHeaders().get("x-pqmesh-peer-identity"), Authorization and every header.
// Usage: java JavaEcho.java PORT...
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;

public class JavaEcho {
    public static void main(String[] args) throws Exception {
        for (String port : args) {
            HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", Integer.parseInt(port)), 64);
            server.createContext("/", JavaEcho::handle);
            server.start();
        }
        System.out.println("READY");
        System.out.flush();
    }

    static String str(String s) {
        if (s == null) return "null";
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') b.append('\\').append(c);
            else if (c < 0x20 || c > 0x7e) b.append(String.format("\\u%04x", (int) c));
            else b.append(c);
        }
        return b.append('"').toString();
    }

    static String joined(List<String> values) {
        return values == null ? null : String.join(", ", values);
    }

    static void handle(HttpExchange ex) throws IOException {
        ex.getRequestBody().readAllBytes();
        URI uri = ex.getRequestURI();
        StringBuilder headers = new StringBuilder("[");
        for (Map.Entry<String, List<String>> h : ex.getRequestHeaders().entrySet()) {
            for (String v : h.getValue()) {
                if (headers.length() > 1) headers.append(',');
                headers.append('[').append(str(h.getKey())).append(',').append(str(v)).append(']');
            }
        }
        headers.append(']');
        String line = "{\"server\":\"java\",\"port\":" + ex.getLocalAddress().getPort()
                + ",\"method\":" + str(ex.getRequestMethod())
                + ",\"path\":" + str(uri.getPath())
                + ",\"raw_path\":" + str(uri.getRawPath())
                + ",\"identity\":" + str(joined(ex.getRequestHeaders().get("x-pqmesh-peer-identity")))
                + ",\"authorization\":" + str(ex.getRequestHeaders().getFirst("Authorization"))
                + ",\"headers\":" + headers + ",\"proto\":" + str(ex.getProtocol()) + "}";
        synchronized (System.out) {
            System.out.println("DIFF " + line);
            System.out.flush();
        }
        byte[] body = (line + "\n").getBytes(StandardCharsets.UTF_8);
        ex.getResponseHeaders().set("Content-Type", "application/json");
        ex.sendResponseHeaders(200, body.length);
        try (OutputStream out = ex.getResponseBody()) {
            out.write(body);
        }
    }
}
