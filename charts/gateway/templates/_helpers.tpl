{{/* Chart name, truncated to a DNS label. */}}
{{- define "gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Object names. The release name is used as is when it already contains the chart name, so the
release `gateway` gets objects named `gateway`.
*/}}
{{- define "gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gateway.labels" -}}
helm.sh/chart: {{ include "gateway.chart" . }}
{{ include "gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/part-of: llm-platform
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "gateway.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end }}
{{- end }}

{{/* The gateway's own drain after SIGTERM: gateway.front_door.shutdown_grace in its config, 50 s by default. */}}
{{- define "gateway.shutdownGraceSeconds" -}}
{{- $grace := dig "gateway" "front_door" "shutdown_grace" 50 .Values.config }}
{{- int (ceil (float64 $grace)) }}
{{- end }}

{{/* Where the spend spool lives: the config's ledger.spool_dir, else values spool.path (the config is given it). */}}
{{- define "gateway.spoolDir" -}}
{{- $dir := dig "ledger" "spool_dir" .Values.spool.path .Values.config }}
{{- if not (and (kindIs "string" $dir) (hasPrefix "/" $dir)) }}
{{- fail (printf "config.ledger.spool_dir: %v is not an absolute path; the spool volume is mounted there (the root filesystem is read-only)" $dir) }}
{{- end }}
{{- $dir }}
{{- end }}

{{/* The gateway's config as the ConfigMap carries it: a ledger without a spool_dir spools on the pod's volume, not
in ./llmp-spool under a read-only root filesystem. */}}
{{- define "gateway.config" -}}
{{- $config := deepCopy .Values.config }}
{{- if and (kindIs "map" (get $config "ledger")) (not (dig "ledger" "spool_dir" "" $config)) }}
{{- $_ := set (get $config "ledger") "spool_dir" .Values.spool.path }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* Seconds a terminating pod gets: preStop sleep, the gateway's shutdown grace, then a margin. */}}
{{- define "gateway.terminationGracePeriodSeconds" -}}
{{- add .Values.drain.preStopSeconds (include "gateway.shutdownGraceSeconds" . | int) .Values.drain.marginSeconds }}
{{- end }}

{{- define "gateway.testImage" -}}
{{- with .Values.tests.image }}
{{- if .digest }}{{ printf "%s@%s" .repository .digest }}{{ else }}{{ printf "%s:%s" .repository .tag }}{{ end }}
{{- end }}
{{- end }}

{{/* The `helm test` Job's pod: never one of the release's server pods. */}}
{{- define "gateway.testSelectorLabels" -}}
app.kubernetes.io/name: {{ include "gateway.name" . }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end }}

{{/* A tag map as the controller's stringMap annotations take it: `k1=v1,k2=v2`, sorted by key. */}}
{{- define "gateway.tagList" -}}
{{- $pairs := list }}
{{- range $key := keys . | sortAlpha }}
{{- $pairs = append $pairs (printf "%s=%s" $key (index $ $key)) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}
