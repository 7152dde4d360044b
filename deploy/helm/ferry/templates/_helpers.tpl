{{/* Labels on every object of a release. */}}
{{- define "ferry.labels" -}}
{{ include "ferry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: ferry-{{ .Chart.Version }}
{{- end }}

{{/* The labels the DaemonSet selects its pods by; the release name keeps releases apart. */}}
{{- define "ferry.selectorLabels" -}}
app.kubernetes.io/name: ferry
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
