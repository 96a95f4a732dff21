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
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
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
{{- define "authz.host" -}}
{{- printf "%s.%s.svc" (include "authz.fullname" .) .Release.Namespace }}
{{- end }}

{{- define "authz.address" -}}
{{- printf "%s:%v" (include "authz.host" .) .Values.service.port }}
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
{{- range $name, $value := .Values.extraEnv }}
{{- if and (not (kindIs "map" $value)) (regexMatch "(KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|DATABASE_URL)" $name) (not (hasSuffix "_FILE" $name)) }}
{{- fail (printf "extraEnv.%s: a secret-looking name with a plain value; reference a Secret (valueFrom.secretKeyRef) instead" $name) }}
{{- end }}
{{- end }}
{{- if and .Values.secrets.existingSecret .Values.secrets.listenDatabaseUrl }}
{{- fail "secrets.listenDatabaseUrl is stored in the chart's Secret, which existingSecret replaces: put the DSN in the existing Secret under secrets.keys.listenDatabaseUrl instead" }}
{{- end }}
{{- if and .Values.http.enabled (eq (int .Values.http.port) (int .Values.service.port)) }}
{{- fail (printf "http.port (%v) must differ from service.port" .Values.http.port) }}
{{- end }}
{{- range $c := .Values.connectors }}
{{- if and $c.clientCertSecret (not $.Values.tls.enabled) }}
{{- fail (printf "connectors[%s].clientCertSecret: a client certificate needs tls.enabled" $c.name) }}
{{- end }}
{{- if and $.Values.tls.enabled $.Values.tls.clientCaKey (not $c.clientCertSecret) }}
{{- fail (printf "connectors[%s].clientCertSecret is required: tls.clientCaKey makes the service require client certificates" $c.name) }}
{{- end }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.secretName is required when tls.enabled: a kubernetes.io/tls Secret (tls.crt, tls.key)" }}
{{- end }}
{{- if lt (int .Values.config.dbPoolMax) (int .Values.config.dbPoolMin) }}
{{- fail (printf "config.dbPoolMax (%v) must be at least config.dbPoolMin (%v)" .Values.config.dbPoolMax .Values.config.dbPoolMin) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail (printf "autoscaling.maxReplicas (%v) must be at least autoscaling.minReplicas (%v)" .Values.autoscaling.maxReplicas .Values.autoscaling.minReplicas) }}
{{- end }}
{{- end }}

{{/* Name of worker i's metrics port (at most 15 characters): metrics, metrics-1, ... */}}
{{- define "authz.metricsPortName" -}}
{{- if eq (int .) 0 }}metrics{{ else }}{{ printf "metrics-%d" (int .) }}{{ end }}
{{- end }}

{{/* The TLS Secret as a volume: the certificate, its key, the CA probes verify against and,
     for mutual TLS, the client CA. */}}
{{- define "authz.tlsVolume" -}}
secret:
  secretName: {{ .Values.tls.secretName }}
  defaultMode: 0440
  items:
    - key: tls.crt
      path: tls.crt
    - key: tls.key
      path: tls.key
    - key: {{ .Values.tls.caKey }}
      path: ca.crt
    {{- if .Values.tls.clientCaKey }}
    - key: {{ .Values.tls.clientCaKey }}
      path: client-ca.crt
    {{- end }}
{{- end }}

{{/* Client-side TLS variables for the probes, `kubectl exec ... authz` and the helm test
     (the CLI's AUTHZ_CA_FILE; with mutual TLS the server's own certificate as client's). */}}
{{- define "authz.tlsClientEnv" -}}
- name: AUTHZ_CA_FILE
  value: /etc/authz/tls/ca.crt
{{- if .Values.tls.clientCaKey }}
- name: AUTHZ_CLIENT_CERT_FILE
  value: /etc/authz/tls/tls.crt
- name: AUTHZ_CLIENT_KEY_FILE
  value: /etc/authz/tls/tls.key
{{- end }}
{{- end }}

{{/* A health probe; arg: dict "root" $ "service" name. Native gRPC without TLS; with TLS,
     the image's healthcheck over TLS to 127.0.0.1 (kubelet's gRPC probes cannot do TLS). */}}
{{- define "authz.probe" -}}
{{- $v := .root.Values }}
{{- if $v.tls.enabled }}
exec:
  command:
    - python
    - -m
    - authz_service.healthcheck
    - {{ printf "127.0.0.1:%v" $v.service.port | quote }}
    - --service={{ .service }}
{{- else }}
grpc:
  port: {{ $v.service.port }}
  {{- with .service }}
  service: {{ . }}
  {{- end }}
{{- end }}
{{- end }}

{{/* extraEnv entries: a string is a plain value, a map carries valueFrom. */}}
{{- define "authz.extraEnv" -}}
{{- range $name, $value := .Values.extraEnv }}
- name: {{ $name }}
{{- if kindIs "map" $value }}
  valueFrom:
    {{- toYaml $value.valueFrom | nindent 4 }}
{{- else }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}
{{- end }}
