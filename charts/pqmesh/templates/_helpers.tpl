{{/*
Names are fixed, not derived from the release name: sidecars, the webhook configuration and the
control plane find each other by them (install the chart once per cluster).
*/}}
{{- define "pqmesh.controlPlaneName" -}}pqmesh-control-plane{{- end -}}
{{- define "pqmesh.webhookServiceName" -}}pqmesh-webhook{{- end -}}
{{- define "pqmesh.webhookConfigName" -}}pqmesh{{- end -}}

{{/* helm.sh/chart: name-version, with "+" (not allowed in label values) replaced. */}}
{{- define "pqmesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Labels that select control-plane pods. They never change across upgrades (a Deployment's
selector is immutable).
*/}}
{{- define "pqmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: control-plane
{{- end -}}

{{/*
Standard labels. Call with (dict "root" $ "component" "control-plane").
*/}}
{{- define "pqmesh.labels" -}}
helm.sh/chart: {{ include "pqmesh.chart" .root }}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: pqmesh
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{/* The control-plane image reference. */}}
{{- define "pqmesh.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The injected containers' image reference; falls back to the control-plane image. */}}
{{- define "pqmesh.sidecarImage" -}}
{{- $repo := .Values.sidecar.image.repository | default .Values.image.repository -}}
{{- $tag := .Values.sidecar.image.tag | default .Values.image.tag | default .Chart.AppVersion -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{/* DNS names the control plane's serving certificate must carry (gRPC and webhook). */}}
{{- define "pqmesh.servingNames" -}}
{{- $ns := .Release.Namespace -}}
{{- $cp := include "pqmesh.controlPlaneName" . -}}
{{- $wh := include "pqmesh.webhookServiceName" . -}}
{{- list $cp (printf "%s.%s" $cp $ns) (printf "%s.%s.svc" $cp $ns) $wh (printf "%s.%s" $wh $ns) (printf "%s.%s.svc" $wh $ns) | join "," -}}
{{- end -}}

{{- define "pqmesh.gatewayName" -}}pqmesh-gateway{{- end -}}

{{/* Labels that select gateway pods (immutable across upgrades). */}}
{{- define "pqmesh.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{/* The gateway's image reference; falls back to the control-plane image. */}}
{{- define "pqmesh.gatewayImage" -}}
{{- $repo := .Values.gateway.image.repository | default .Values.image.repository -}}
{{- $tag := .Values.gateway.image.tag | default .Values.image.tag | default .Chart.AppVersion -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
