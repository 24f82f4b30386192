{{/* Chart name. */}}
{{- define "ei.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name prefix of every resource (at most 52 characters, leaving room for suffixes). */}}
{{- define "ei.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ei.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every resource. */}}
{{- define "ei.labels" -}}
helm.sh/chart: {{ include "ei.chart" . }}
{{ include "ei.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: engagement-index
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "ei.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ei.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Names of the parts. */}}
{{- define "ei.worker.fullname" -}}{{ include "ei.fullname" . }}-worker{{- end -}}
{{- define "ei.worker.headless" -}}{{ include "ei.fullname" . }}-worker-headless{{- end -}}
{{- define "ei.collector.fullname" -}}{{ include "ei.fullname" . }}-collector{{- end -}}
{{- define "ei.config.fullname" -}}{{ include "ei.fullname" . }}-config{{- end -}}

{{- define "ei.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ei.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ei.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The topology YAML text (override or the shipped copy of streams/topology.yaml). */}}
{{- define "ei.topology" -}}
{{- if .Values.topologyOverride -}}
{{- .Values.topologyOverride -}}
{{- else -}}
{{- required "files/topology.yaml is missing: run dev/tools/sync-chart-files.sh" (.Files.Get "files/topology.yaml") -}}
{{- end -}}
{{- end -}}

{{/* Key of the running model in the config ConfigMap. */}}
{{- define "ei.modelKey" -}}
{{- if .Values.model.inline -}}model-inline.yaml{{- else -}}{{ printf "model-%s.yaml" .Values.model.name }}{{- end -}}
{{- end -}}

{{/* Fail early on values that cannot work. */}}
{{- define "ei.validate" -}}
{{- if not .Values.kafka.bootstrapServers -}}
{{- fail "kafka.bootstrapServers is required (e.g. my-cluster-kafka-bootstrap.kafka.svc:9093)" -}}
{{- end -}}
{{- $protocols := list "PLAINTEXT" "SSL" "SASL_PLAINTEXT" "SASL_SSL" -}}
{{- if not (has .Values.kafka.securityProtocol $protocols) -}}
{{- fail (printf "kafka.securityProtocol must be one of %s" (join ", " $protocols)) -}}
{{- end -}}
{{- if .Values.kafka.sasl.mechanism -}}
{{- if not (has .Values.kafka.sasl.mechanism (list "PLAIN" "SCRAM-SHA-256" "SCRAM-SHA-512")) -}}
{{- fail "kafka.sasl.mechanism must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512" -}}
{{- end -}}
{{- if not (hasPrefix "SASL_" .Values.kafka.securityProtocol) -}}
{{- fail "kafka.sasl.mechanism needs kafka.securityProtocol SASL_SSL (or SASL_PLAINTEXT)" -}}
{{- end -}}
{{- if not .Values.kafka.sasl.existingSecret -}}
{{- fail "kafka.sasl.existingSecret is required with kafka.sasl.mechanism (the Secret holding the password)" -}}
{{- end -}}
{{- else if hasPrefix "SASL_" .Values.kafka.securityProtocol -}}
{{- fail "kafka.securityProtocol SASL_* needs kafka.sasl.mechanism" -}}
{{- end -}}
{{- if and .Values.kafka.tls.clientCertSecret (not (has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL"))) -}}
{{- fail "kafka.tls.clientCertSecret needs kafka.securityProtocol SSL or SASL_SSL" -}}
{{- end -}}
{{- if and (not .Values.model.inline) (not (.Files.Get (printf "files/models/%s.yaml" .Values.model.name))) -}}
{{- fail (printf "model.name %q: no files/models/%s.yaml in the chart (models: config/models/, synced by dev/tools/sync-chart-files.sh)" .Values.model.name .Values.model.name) -}}
{{- end -}}
{{- $topology := include "ei.topology" . | fromYaml -}}
{{- $partitions := int (default 0 (get $topology "scoring_partitions")) -}}
{{- if lt $partitions 1 -}}
{{- fail "the topology has no scoring_partitions" -}}
{{- end -}}
{{- if gt (int .Values.worker.replicas) $partitions -}}
{{- fail (printf "worker.replicas (%d) must not exceed the topology's scoring_partitions (%d): extra workers would get no partition and never become ready" (int .Values.worker.replicas) $partitions) -}}
{{- end -}}
{{- end -}}

{{/* Kafka connection environment, shared by every container. */}}
{{- define "ei.kafkaEnv" -}}
- name: ENGAGEMENT_INDEX_BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: ENGAGEMENT_INDEX_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if .Values.kafka.sasl.mechanism }}
- name: ENGAGEMENT_INDEX_SASL_MECHANISM
  value: {{ .Values.kafka.sasl.mechanism | quote }}
{{- if .Values.kafka.sasl.username }}
- name: ENGAGEMENT_INDEX_SASL_USERNAME
  value: {{ .Values.kafka.sasl.username | quote }}
{{- else }}
- name: ENGAGEMENT_INDEX_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.usernameKey }}
{{- end }}
- name: ENGAGEMENT_INDEX_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.passwordKey }}
{{- end }}
{{- if .Values.kafka.tls.caSecret }}
- name: ENGAGEMENT_INDEX_SSL_CAFILE
  value: /etc/engagement-index/kafka-ca/{{ .Values.kafka.tls.caKey }}
{{- end }}
{{- if .Values.kafka.tls.clientCertSecret }}
- name: ENGAGEMENT_INDEX_SSL_CERTFILE
  value: /etc/engagement-index/kafka-client/{{ .Values.kafka.tls.clientCertKey }}
- name: ENGAGEMENT_INDEX_SSL_KEYFILE
  value: /etc/engagement-index/kafka-client/{{ .Values.kafka.tls.clientKeyKey }}
{{- end }}
- name: ENGAGEMENT_INDEX_TOPOLOGY_FILE
  value: /etc/engagement-index/config/topology.yaml
- name: ENGAGEMENT_INDEX_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- end -}}

{{/* Volume and mount of the Kafka CA bundle. */}}
{{- define "ei.kafkaCaVolume" -}}
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.tls.caSecret }}
    items:
      - key: {{ .Values.kafka.tls.caKey }}
        path: {{ .Values.kafka.tls.caKey }}
{{- end }}
{{- if .Values.kafka.tls.clientCertSecret }}
- name: kafka-client
  secret:
    secretName: {{ .Values.kafka.tls.clientCertSecret }}
    items:
      - key: {{ .Values.kafka.tls.clientCertKey }}
        path: {{ .Values.kafka.tls.clientCertKey }}
      - key: {{ .Values.kafka.tls.clientKeyKey }}
        path: {{ .Values.kafka.tls.clientKeyKey }}
{{- end }}
{{- end -}}
{{- define "ei.kafkaCaMount" -}}
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  mountPath: /etc/engagement-index/kafka-ca
  readOnly: true
{{- end }}
{{- if .Values.kafka.tls.clientCertSecret }}
- name: kafka-client
  mountPath: /etc/engagement-index/kafka-client
  readOnly: true
{{- end }}
{{- end -}}

{{/* Soft anti-affinity spreading the pods of one component over nodes. */}}
{{- define "ei.softAntiAffinity" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "ei.selectorLabels" .root | nindent 12 }}
            app.kubernetes.io/component: {{ .component }}
{{- end -}}
