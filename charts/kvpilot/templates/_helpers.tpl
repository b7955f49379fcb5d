{{/* Names and labels shared by every template. */}}
{{- define "kvpilot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kvpilot.fullname" -}}
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

{{- define "kvpilot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvpilot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kvpilot.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kvpilot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kvpilot
{{- end }}

{{- define "kvpilot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kvpilot.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kvpilot.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Whether the operator settings need a ConfigMap (files passed by path). */}}
{{- define "kvpilot.needsConfig" -}}
{{- $o := .Values.operator }}
{{- if or $o.scalingDefaults $o.promqlTemplates $o.tenantPolicy $o.gpuCosts }}true{{ end }}
{{- end }}

{{/* The `kvpilot run` arguments: every operator setting of values.yaml. */}}
{{- define "kvpilot.args" -}}
- run
- --metrics-port={{ .Values.metrics.port }}
- --health-port={{ .Values.health.port }}
{{- range .Values.watchNamespaces }}
- --namespace={{ . }}
{{- end }}
{{- if .Values.leaderElection.enabled }}
- --leader-election-namespace={{ .Release.Namespace }}
- --leader-election-id={{ .Values.leaderElection.leaseName }}
{{- else }}
- --no-leader-election
{{- end }}
{{- with .Values.operator.prometheusUrl }}
- --prometheus-url={{ . }}
{{- end }}
- --autoscale-interval={{ .Values.operator.autoscaleInterval }}
- --metrics-step={{ .Values.operator.metricsStep }}
- --repair-interval={{ .Values.operator.repairInterval }}
- --workers={{ .Values.operator.workers }}
{{- if .Values.operator.scalingDefaults }}
- --scaling-defaults=/etc/kvpilot/scaling-defaults.yaml
{{- end }}
{{- if .Values.operator.promqlTemplates }}
- --promql-templates=/etc/kvpilot/promql-templates.yaml
{{- end }}
{{- if .Values.operator.tenantPolicy }}
- --tenant-policy=/etc/kvpilot/tenant-policy.yaml
{{- end }}
{{- if .Values.operator.gpuCosts }}
- --gpu-costs=/etc/kvpilot/gpu-costs.yaml
{{- end }}
{{- with .Values.operator.gpuTypes }}
- --gpu-types={{ join "," . }}
{{- end }}
{{- with .Values.operator.schedulerName }}
- --scheduler-name={{ . }}
{{- end }}
{{- if .Values.operator.verbose }}
- --verbose
{{- end }}
{{- with .Values.operator.extraArgs }}
{{ toYaml . }}
{{- end }}
{{- end }}
