{{/* Names, labels and the few facts several templates derive. */}}

{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sluice.fullname" -}}
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

{{- define "sluice.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "sluice.labels" -}}
helm.sh/chart: {{ include "sluice.chart" . }}
{{ include "sluice.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sluice
{{- end }}

{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "scheduler"). */}}
{{- define "sluice.componentSelector" -}}
{{ include "sluice.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "sluice.componentLabels" -}}
{{ include "sluice.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "sluice.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sluice.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sluice.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "sluice.schedulerName" -}}{{ include "sluice.fullname" . }}-scheduler{{- end }}
{{- define "sluice.flightSqlName" -}}{{ include "sluice.fullname" . }}-flight-sql{{- end }}
{{- define "sluice.executorName" -}}{{ include "sluice.fullname" . }}-executor{{- end }}
{{- define "sluice.etcdName" -}}{{ include "sluice.fullname" . }}-etcd{{- end }}
{{- define "sluice.etcdHeadlessName" -}}{{ include "sluice.fullname" . }}-etcd-headless{{- end }}

{{/* The Secret holding the cluster certificates. */}}
{{- define "sluice.clusterTlsSecret" -}}
{{- default (printf "%s-cluster-tls" (include "sluice.fullname" .)) .Values.tls.existingSecret }}
{{- end }}

{{/* The Secret holding the token file, and its key. */}}
{{- define "sluice.tokensSecret" -}}
{{- default (printf "%s-tokens" (include "sluice.fullname" .)) .Values.auth.existingSecret }}
{{- end }}
{{- define "sluice.tokensKey" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.existingSecretKey }}{{ else }}tokens{{ end }}
{{- end }}
{{- define "sluice.hasTokens" -}}
{{- if or .Values.auth.tokens .Values.auth.existingSecret }}true{{ end }}
{{- end }}

{{- define "sluice.flightSqlTlsSecret" -}}
{{- default (printf "%s-flight-sql-tls" (include "sluice.fullname" .)) .Values.flightSql.tls.existingSecret }}
{{- end }}
{{- define "sluice.flightSqlHasTls" -}}
{{- if or .Values.flightSql.tls.existingSecret .Values.flightSql.tls.cert }}true{{ end }}
{{- end }}

{{- define "sluice.s3Secret" -}}
{{- default (printf "%s-s3" (include "sluice.fullname" .)) .Values.s3.existingSecret }}
{{- end }}
{{- define "sluice.hasS3Secret" -}}
{{- if or .Values.s3.existingSecret .Values.s3.accessKeyId }}true{{ end }}
{{- end }}

{{/* http or https: the scheme of etcd's client URLs. */}}
{{- define "sluice.etcdScheme" -}}
{{- if .Values.etcd.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{/* --etcd-endpoints: every bundled member, or the external list. */}}
{{- define "sluice.etcdEndpoints" -}}
{{- if eq .Values.etcd.mode "external" }}
{{- join "," .Values.etcd.external.endpoints }}
{{- else }}
{{- $urls := list }}
{{- $scheme := include "sluice.etcdScheme" . }}
{{- $name := include "sluice.etcdName" . }}
{{- $headless := include "sluice.etcdHeadlessName" . }}
{{- range $i := until (int .Values.etcd.bundled.replicas) }}
{{- $urls = append $urls (printf "%s://%s-%d.%s.%s.svc.%s:2379" $scheme $name $i $headless $.Release.Namespace $.Values.clusterDomain) }}
{{- end }}
{{- join "," $urls }}
{{- end }}
{{- end }}

{{/* Where the init container puts private files (mode 0400), per pod. */}}
{{- define "sluice.keysDir" -}}/run/sluice/keys{{- end }}

{{/* Pod-level securityContext: non-root, the image's user. */}}
{{- define "sluice.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level securityContext. */}}
{{- define "sluice.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end }}

{{/*
The init container that copies Secret files into the keys emptyDir with mode 0400. Secret
volumes under an fsGroup are group-readable whatever their defaultMode (the kubelet adds 0440
for the fsGroup), and the binaries refuse a key or token file others can read.
Args: (dict "ctx" $ "dirs" (list "cluster" "tokens" ...)): each /secrets/NAME is copied to
KEYS/NAME.
*/}}
{{- define "sluice.keyInitContainer" -}}
{{- $ctx := .ctx }}
- name: install-keys
  image: {{ printf "%s:%s" $ctx.Values.keyInit.image.repository $ctx.Values.keyInit.image.tag }}
  imagePullPolicy: {{ $ctx.Values.keyInit.image.pullPolicy }}
  command: ["/bin/sh", "-ec"]
  args:
    - |
      umask 077
      for dir in {{ join " " .dirs }}; do
        mkdir -p {{ include "sluice.keysDir" $ctx }}/$dir
        for f in /secrets/$dir/*; do
          cp "$f" {{ include "sluice.keysDir" $ctx }}/$dir/
          chmod 0400 {{ include "sluice.keysDir" $ctx }}/$dir/"${f##*/}"
        done
      done
  securityContext:
    {{- include "sluice.containerSecurityContext" $ctx | nindent 4 }}
  resources:
    requests: {cpu: 10m, memory: 16Mi}
    limits: {memory: 32Mi}
  volumeMounts:
    {{- range .dirs }}
    - name: secret-{{ . }}
      mountPath: /secrets/{{ . }}
      readOnly: true
    {{- end }}
    - name: keys
      mountPath: {{ include "sluice.keysDir" $ctx }}
{{- end }}

{{/* Environment shared by schedulers and executors: etcd, cluster, S3. */}}
{{- define "sluice.commonEnv" -}}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: SLUICE_ETCD_ENDPOINTS
  value: {{ include "sluice.etcdEndpoints" . | quote }}
- name: SLUICE_CLUSTER
  value: {{ .Values.clusterName | quote }}
- name: SLUICE_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- if .Values.tracing.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.tracing.otlpEndpoint | quote }}
- name: OTEL_BSP_SCHEDULE_DELAY
  value: {{ .Values.tracing.scheduleDelayMs | quote }}
{{- end }}
{{- if and .Values.etcd.tls.enabled (eq .Values.etcd.mode "external") .Values.etcd.external.tls.existingSecret }}
- name: SLUICE_ETCD_CA
  value: {{ include "sluice.keysDir" . }}/etcd/ca.pem
- name: SLUICE_ETCD_CERT
  value: {{ include "sluice.keysDir" . }}/etcd/client.pem
- name: SLUICE_ETCD_KEY
  value: {{ include "sluice.keysDir" . }}/etcd/client.key
{{- end }}
{{- if .Values.s3.region }}
- name: AWS_REGION
  value: {{ .Values.s3.region | quote }}
{{- end }}
{{- if .Values.s3.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ .Values.s3.endpoint | quote }}
{{- end }}
{{- if .Values.s3.allowHttp }}
- name: AWS_ALLOW_HTTP
  value: "true"
{{- end }}
{{- end }}

{{/* envFrom: S3 credentials. */}}
{{- define "sluice.commonEnvFrom" -}}
{{- if include "sluice.hasS3Secret" . }}
- secretRef:
    name: {{ include "sluice.s3Secret" . }}
{{- end }}
{{- end }}

{{/*
Checks across values that a JSON schema cannot express; each names the values at fault.
*/}}
{{- define "sluice.validate" -}}
{{- if and (eq .Values.etcd.mode "external") (not .Values.etcd.external.endpoints) }}
{{- fail "etcd.external.endpoints: etcd.mode is external but no endpoint is given" }}
{{- end }}
{{- if eq .Values.etcd.mode "external" }}
{{- range .Values.etcd.external.endpoints }}
{{- if and (hasPrefix "https://" .) (not $.Values.etcd.tls.enabled) }}
{{- fail (printf "etcd.external.endpoints: %s is https:// but etcd.tls.enabled is false" .) }}
{{- end }}
{{- if and (hasPrefix "http://" .) $.Values.etcd.tls.enabled }}
{{- fail (printf "etcd.external.endpoints: %s is http:// but etcd.tls.enabled is true" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.etcd.tls.enabled (not .Values.tls.enabled) (not .Values.etcd.external.tls.existingSecret) }}
{{- fail "etcd.tls.enabled: Sluice members authenticate to etcd with their cluster certificates; set tls.enabled (or, for external etcd, etcd.external.tls.existingSecret)" }}
{{- end }}
{{- if and .Values.etcd.tls.enabled (eq .Values.etcd.mode "bundled") (not .Values.tls.enabled) }}
{{- fail "etcd.tls.enabled: bundled etcd's certificate (etcd.pem) comes with the cluster certificates; set tls.enabled" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- range $k := list "ca" "schedulerCert" "schedulerKey" "executorCert" "executorKey" }}
{{- if not (index $.Values.tls.cluster $k) }}
{{- fail (printf "tls.cluster.%s: tls.enabled needs tls.existingSecret or the certificate files (helm --set-file tls.cluster.%s=...)" $k $k) }}
{{- end }}
{{- end }}
{{- if and .Values.etcd.tls.enabled (eq .Values.etcd.mode "bundled") (or (not .Values.tls.cluster.etcdCert) (not .Values.tls.cluster.etcdKey)) }}
{{- fail "tls.cluster.etcdCert: bundled etcd with etcd.tls.enabled needs etcdCert and etcdKey (etcd.pem, etcd.key)" }}
{{- end }}
{{- if and (or .Values.keda.enabled .Values.serviceMonitor.enabled) (or (not .Values.tls.cluster.clientCert) (not .Values.tls.cluster.clientKey)) }}
{{- fail "tls.cluster.clientCert: KEDA and the ServiceMonitor call the TLS scheduler port with the client certificate; set clientCert and clientKey" }}
{{- end }}
{{- end }}
{{- if and .Values.auth.tokens .Values.auth.existingSecret }}
{{- fail "auth.tokens: give either auth.tokens or auth.existingSecret, not both" }}
{{- end }}
{{- if and (include "sluice.hasTokens" .) (not .Values.tls.enabled) }}
{{- fail "auth.tokens: the scheduler refuses tokens on a non-loopback port without cluster TLS (they would cross the network in cleartext); set tls.enabled" }}
{{- end }}
{{- if .Values.flightSql.enabled }}
{{- if and (not (include "sluice.hasTokens" .)) (not .Values.flightSql.allowAnonymous) }}
{{- fail "flightSql.enabled: Flight SQL off loopback needs auth.tokens (or auth.existingSecret), or flightSql.allowAnonymous" }}
{{- end }}
{{- if and (include "sluice.hasTokens" .) (not (include "sluice.flightSqlHasTls" .)) }}
{{- fail "flightSql.tls: tokens off loopback need Flight SQL TLS; set flightSql.tls.existingSecret or flightSql.tls.cert and flightSql.tls.key" }}
{{- end }}
{{- if and .Values.flightSql.tls.cert (not .Values.flightSql.tls.key) }}
{{- fail "flightSql.tls.key: flightSql.tls.cert needs its key" }}
{{- end }}
{{- if eq (int .Values.flightSql.port) (int .Values.scheduler.port) }}
{{- fail "flightSql.port: must differ from scheduler.port" }}
{{- end }}
{{- end }}
{{- if and .Values.s3.accessKeyId .Values.s3.existingSecret }}
{{- fail "s3.accessKeyId: give either s3.accessKeyId/secretAccessKey or s3.existingSecret, not both" }}
{{- end }}
{{- if and .Values.s3.accessKeyId (not .Values.s3.secretAccessKey) }}
{{- fail "s3.secretAccessKey: s3.accessKeyId needs its secret key" }}
{{- end }}
{{- if and .Values.executor.spot.enabled .Values.executor.nodeAffinity }}
{{- fail "executor.nodeAffinity: set either executor.spot.enabled or executor.nodeAffinity, not both" }}
{{- end }}
{{- if gt (int .Values.executor.drainDeadlineSeconds) (int (index .Values.scheduler.config "executor-termination-grace-period-seconds" | default 30)) }}
{{- fail (printf "executor.drainDeadlineSeconds: %d is longer than scheduler.config.executor-termination-grace-period-seconds (%d): the scheduler would drop a draining executor first" (int .Values.executor.drainDeadlineSeconds) (int (index .Values.scheduler.config "executor-termination-grace-period-seconds" | default 30))) }}
{{- end }}
{{- if .Values.keda.enabled }}
{{- if gt (int .Values.keda.minReplicaCount) (int .Values.keda.maxReplicaCount) }}
{{- fail "keda.minReplicaCount: greater than keda.maxReplicaCount" }}
{{- end }}
{{- if gt (int (index .Values.scheduler.config "min-ready-executors" | default 0)) (int .Values.keda.minReplicaCount) }}
{{- fail "scheduler.config.min-ready-executors: above keda.minReplicaCount, the leader would be unready with fewer executors and KEDA could not reach its scaler to scale up" }}
{{- end }}
{{- if and (eq (int .Values.keda.slotsPerExecutor) 0) (eq (int .Values.executor.config.vcores) 0) }}
{{- fail "keda.slotsPerExecutor: set it when executor.config.vcores is 0 (the CPUs the pod sees)" }}
{{- end }}
{{- end }}
{{- $ports := list (int .Values.executor.flightPort) (int .Values.executor.grpcPort) (int .Values.executor.metricsPort) }}
{{- if ne (len (uniq $ports)) 3 }}
{{- fail "executor.flightPort: executor.flightPort, executor.grpcPort and executor.metricsPort must differ" }}
{{- end }}
{{- end }}
{{- define "sluice.validateFlightSqlTls" -}}
{{- if and .Values.flightSql.tls.verifyClients (not .Values.flightSql.tls.existingSecret) (not .Values.flightSql.tls.clientCa) }}
{{- fail "flightSql.tls.clientCa: flightSql.tls.verifyClients needs the clients' CA (clientCa, or ca.crt in flightSql.tls.existingSecret)" }}
{{- end }}
{{- end }}
