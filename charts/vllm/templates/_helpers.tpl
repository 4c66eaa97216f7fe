{{/* Chart name, truncated to a DNS label. */}}
{{- define "vllm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Object names. The release name is used as is when it already contains the chart name, so the
release `vllm-<model>` gets the Service `vllm-<model>` (the gateway's upstream URLs rely on it).
*/}}
{{- define "vllm.fullname" -}}
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

{{- define "vllm.headlessName" -}}
{{- printf "%s-headless" (include "vllm.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "vllm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vllm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vllm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vllm.labels" -}}
helm.sh/chart: {{ include "vllm.chart" . }}
{{ include "vllm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | quote }}
app.kubernetes.io/component: model-server
app.kubernetes.io/part-of: llm-platform
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "vllm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vllm.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "vllm.servedName" -}}
{{- default .Values.model.source .Values.model.servedName }}
{{- end }}

{{- define "vllm.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end }}
{{- end }}

{{/* Where the Hugging Face token comes from: "secretsManager", "secret" or "" (none). */}}
{{- define "vllm.hfTokenSource" -}}
{{- $t := .Values.model.hfToken }}
{{- if and $t.secretsManager.secretId $t.secret.name }}
{{- fail "model.hfToken: set secretsManager or secret, not both" }}
{{- else if $t.secretsManager.secretId }}
{{- if not .Values.serviceAccount.roleArn }}
{{- fail "model.hfToken.secretsManager needs serviceAccount.roleArn: the IAM role the CSI driver reads the secret as" }}
{{- end }}
{{- "secretsManager" }}
{{- else if $t.secret.name }}
{{- "secret" }}
{{- end }}
{{- end }}

{{- define "vllm.hfTokenProviderClass" -}}
{{- printf "%s-hf-token" (include "vllm.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/* Seconds a terminating pod gets: preStop sleep, vLLM's drain, then the engine's exit. */}}
{{- define "vllm.terminationGracePeriodSeconds" -}}
{{- add .Values.drain.preStopSeconds .Values.drain.timeoutSeconds .Values.drain.marginSeconds }}
{{- end }}

{{/* The startup probe's budget plus 15 minutes for pulling the image. */}}
{{- define "vllm.progressDeadlineSeconds" -}}
{{- $s := .Values.probes.startup }}
{{- add (mul $s.periodSeconds $s.failureThreshold) 900 }}
{{- end }}

{{/* "true" when the release may run more than one replica (spread constraints then apply). */}}
{{- define "vllm.mayRunReplicas" -}}
{{- if or (gt (int .Values.replicaCount) 1) (and .Values.autoscaling.enabled (gt (int .Values.autoscaling.maxReplicas) 1)) }}true{{- end }}
{{- end }}

{{- define "vllm.testImage" -}}
{{- with .Values.tests.image }}
{{- if .digest }}{{ printf "%s@%s" .repository .digest }}{{ else }}{{ printf "%s:%s" .repository .tag }}{{ end }}
{{- end }}
{{- end }}

{{/* The `helm test` Job's pod: never one of the release's server pods. */}}
{{- define "vllm.testSelectorLabels" -}}
app.kubernetes.io/name: {{ include "vllm.name" . }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end }}
