{{/* Names and labels. */}}
{{- define "animate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "animate.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: call with (list $ "api"). */}}
{{- define "animate.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "animate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "animate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The Redis list RQ keeps the waiting jobs in: rq:queue:<QUEUE_NAME>, QUEUE_NAME from contract/queue.py,
the queue the API enqueues to. KEDA scales on its length; tests/test_helm.py fills it through the API
and reads the length back under this name.
*/}}
{{- define "animate.queueList" -}}rq:queue:animate{{- end -}}

{{/* Redis: the trial's, else the external one (required). */}}
{{- define "animate.redisHost" -}}
{{- if .Values.trial.enabled -}}
{{- printf "%s-redis" (include "animate.fullname" .) -}}
{{- else -}}
{{- required "redis.host is required (or trial.enabled=true)" .Values.redis.host -}}
{{- end -}}
{{- end -}}

{{- define "animate.redisUrl" -}}
{{- $scheme := ternary "rediss" "redis" (and .Values.redis.tls (not .Values.trial.enabled)) -}}
{{- $auth := ternary ":$(REDIS_PASSWORD)@" "" (and (not .Values.trial.enabled) (ne .Values.redis.existingSecret "")) -}}
{{- printf "%s://%s%s:%v/%v" $scheme $auth (include "animate.redisHost" .) .Values.redis.port .Values.redis.database -}}
{{- end -}}

{{/* The store: the trial's MinIO, else the external one (required). */}}
{{- define "animate.storeUrl" -}}
{{- if .Values.trial.enabled -}}
{{- printf "s3://%s/jobs" .Values.trial.minio.bucket -}}
{{- else -}}
{{- required "store.url (s3://BUCKET/PREFIX) is required (or trial.enabled=true)" .Values.store.url -}}
{{- end -}}
{{- end -}}

{{- define "animate.storeEndpoint" -}}
{{- if .Values.trial.enabled -}}
{{- printf "http://%s-minio:9000" (include "animate.fullname" .) -}}
{{- else -}}
{{- .Values.store.endpoint -}}
{{- end -}}
{{- end -}}

{{- define "animate.storeSecret" -}}
{{- if .Values.trial.enabled -}}
{{- printf "%s-minio" (include "animate.fullname" .) -}}
{{- else -}}
{{- .Values.store.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "animate.modelsUrl" -}}
{{- if and .Values.trial.enabled (not .Values.models.url) -}}
{{- printf "s3://%s/models" .Values.trial.minio.bucket -}}
{{- else -}}
{{- required "models.url (s3://BUCKET/PREFIX of the checkpoints) is required with models.source=store" .Values.models.url -}}
{{- end -}}
{{- end -}}

{{/* WORKER_STOP_GRACE: set, else JOB_TIMEOUT + 30 s, so any job that can finish does. */}}
{{- define "animate.stopGrace" -}}
{{- if .Values.workers.stopGraceSeconds -}}
{{- .Values.workers.stopGraceSeconds | int -}}
{{- else -}}
{{- add (default "1800" .Values.config.JOB_TIMEOUT | int) 30 -}}
{{- end -}}
{{- end -}}

{{/*
Whether some job worker is always up. /readyz answers 503 while no worker is alive; with every pool
allowed to scale to zero, the API's readiness uses /healthz instead, or no API pod would ever take the
request that wakes a worker.
*/}}
{{- define "animate.workersAlwaysUp" -}}
{{- $up := false -}}
{{- range $name, $pool := .Values.workers.pools -}}
{{- if and $pool.enabled (or (not $.Values.keda.enabled) (gt (int $pool.keda.minReplicaCount) 0)) (gt (int $pool.replicas) 0) -}}
{{- $up = true -}}
{{- end -}}
{{- end -}}
{{- $up -}}
{{- end -}}

{{/* The environment every container gets beside the ConfigMap: connections and secrets. */}}
{{- define "animate.env" -}}
{{- if and (not .Values.trial.enabled) .Values.redis.existingSecret }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.passwordKey }}
{{- end }}
- name: REDIS_URL
  value: {{ include "animate.redisUrl" . | quote }}
{{- with include "animate.storeSecret" . }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: AWS_SECRET_ACCESS_KEY
{{- end }}
{{- with .Values.apiKeys.existingSecret }}
- name: API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: API_KEYS
{{- end }}
{{- with .Values.webhooks.existingSecret }}
- name: WEBHOOK_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: WEBHOOK_SECRET
{{- end }}
{{- end -}}

{{/* A component's own settings (a pool's BATCH_SIZE, ...), checked against what the chart sets. */}}
{{- define "animate.configEnv" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{- define "animate.podSecurity" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{- define "animate.containerSecurity" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end -}}

{{/* The scratch volumes of a read-only root file system: /data (DATA_DIR, scratch) and /tmp. */}}
{{- define "animate.scratchVolumes" -}}
- name: data
  emptyDir:
    sizeLimit: {{ . }}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
{{- end -}}

{{- define "animate.scratchMounts" -}}
- name: data
  mountPath: /data
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* The checkpoints (WEIGHTS_DIR=/weights): a PVC, or an emptyDir the init container fills. */}}
{{- define "animate.modelVolumes" -}}
{{- if eq .Values.models.source "pvc" }}
- name: weights
  persistentVolumeClaim:
    claimName: {{ required "models.claimName is required with models.source=pvc" .Values.models.claimName }}
    readOnly: true
{{- else if eq .Values.models.source "store" }}
- name: weights
  emptyDir:
    sizeLimit: {{ .Values.models.sizeLimit }}
- name: models-script
  configMap:
    name: {{ include "animate.fullname" . }}-models
{{- else }}
{{- fail (printf "models.source must be store or pvc, not %q" .Values.models.source) }}
{{- end }}
{{- end -}}

{{- define "animate.modelsInit" -}}
{{- if eq .Values.models.source "store" }}
initContainers:
  - name: models
    image: "{{ .Values.image.worker.repository }}:{{ .Values.image.worker.tag }}"
    imagePullPolicy: {{ .Values.image.worker.pullPolicy }}
    command: ["python", "/opt/animate/models.py", "fetch", {{ include "animate.modelsUrl" . | quote }}, "/weights"]
    envFrom:
      - configMapRef:
          name: {{ include "animate.fullname" . }}
    env:
      {{- include "animate.env" . | nindent 6 }}
    {{- include "animate.containerSecurity" . | nindent 4 }}
    resources:
      requests: {cpu: 100m, memory: 256Mi}
      limits: {cpu: "1", memory: 512Mi}
    volumeMounts:
      - name: weights
        mountPath: /weights
      - name: models-script
        mountPath: /opt/animate
        readOnly: true
      - name: tmp
        mountPath: /tmp
{{- end }}
{{- end -}}
