{{/* Chart name, truncated to a DNS label. */}}
{{- define "authz.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified release name; the release name alone when it already contains the chart name. */}}
{{- define "authz.fullname" -}}
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

{{- define "authz.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "authz.labels" -}}
helm.sh/chart: {{ include "authz.chart" . }}
app.kubernetes.io/name: {{ include "authz.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: authz-service
{{- end }}

{{/* Selector of the release's pods; add a component label to narrow it. */}}
{{- define "authz.selectorLabels" -}}
app.kubernetes.io/name: {{ include "authz.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector of the service (server) pods. */}}
{{- define "authz.serverSelectorLabels" -}}
{{ include "authz.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "authz.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "authz.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "authz.image" -}}
{{- $repo := required "image.repository is required: the image built from the repository's Dockerfile, e.g. registry.example.com/authz-service" .Values.image.repository }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding the service's database URL and keys. */}}
{{- define "authz.secretName" -}}
{{- default (include "authz.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* The Secret the migration Job reads: the existing one, or the chart's hook Secret
     (a pre-install hook runs before the release's ordinary objects exist). */}}
{{- define "authz.migrationSecretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- printf "%s-migrate" (include "authz.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{/* In-cluster gRPC address of the service. */}}
{{- define "authz.address" -}}
{{- printf "%s.%s.svc:%v" (include "authz.fullname" .) .Release.Namespace .Values.service.port }}
{{- end }}

{{/* Name of a connector's objects; arg: dict "root" $ "c" connector. */}}
{{- define "authz.connectorName" -}}
{{- printf "%s-%s" (include "authz.fullname" .root | trunc 40 | trimSuffix "-") .c.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fail with a clear message unless the secret values the chart must store are present. */}}
{{- define "authz.checkSecrets" -}}
{{- if not .Values.secrets.existingSecret }}
{{- $_ := required "secrets.databaseUrl is required (the authz_service role's DSN) unless secrets.existingSecret is set" .Values.secrets.databaseUrl }}
{{- $_ = required "secrets.secretKey is required (at least 32 characters) unless secrets.existingSecret is set" .Values.secrets.secretKey }}
{{- if .Values.migration.enabled }}
{{- $_ = required "secrets.migrateDatabaseUrl is required (the schema owner's DSN, for `authz migrate`) unless secrets.existingSecret is set" .Values.secrets.migrateDatabaseUrl }}
{{- end }}
{{- end }}
{{- end }}

{{/* Cross-field checks the JSON schema cannot express. */}}
{{- define "authz.checkValues" -}}
{{- if lt (int .Values.config.dbPoolMax) (int .Values.config.dbPoolMin) }}
{{- fail (printf "config.dbPoolMax (%v) must be at least config.dbPoolMin (%v)" .Values.config.dbPoolMax .Values.config.dbPoolMin) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail (printf "autoscaling.maxReplicas (%v) must be at least autoscaling.minReplicas (%v)" .Values.autoscaling.maxReplicas .Values.autoscaling.minReplicas) }}
{{- end }}
{{- end }}
