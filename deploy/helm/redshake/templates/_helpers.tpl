{{- define "redshake.labels" -}}
app.kubernetes.io/name: redshake
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "redshake.replicas" -}}
{{- if eq .Values.mode "perShard" }}{{ .Values.shards }}{{ else }}1{{ end -}}
{{- end -}}
