{{/*
Chart name, overridable with nameOverride (at most 63 characters: a DNS label).
*/}}
{{- define "streamjob-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every object name. A release named "streamjob" (or "streamjob-operator") gives
"streamjob-operator"; a release "prod" gives "prod-streamjob-operator".
*/}}
{{- define "streamjob-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "streamjob-operator.name" . }}
{{- if contains .Release.Name $name }}
{{- $name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "streamjob-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "streamjob-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: streamjob
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels that select the operator pods (must never change across upgrades).
*/}}
{{- define "streamjob-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamjob-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
ServiceAccount the operator runs as.
*/}}
{{- define "streamjob-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "streamjob-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Whether leader election is on: leaderElection.enabled, forced on with more than one replica
(two replicas reconciling the same jobs would fight over every object). Yields "true" or "false".
*/}}
{{- define "streamjob-operator.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) }}true{{ else }}false{{ end }}
{{- end }}

{{/*
Name of the leader election Lease (one per release, so two releases in one namespace do not
share a leader).
*/}}
{{- define "streamjob-operator.leaseName" -}}
{{- include "streamjob-operator.fullname" . }}
{{- end }}

{{/*
Image references; an empty tag means the chart's appVersion.
*/}}
{{- define "streamjob-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "streamjob-operator.workerImage" -}}
{{- printf "%s:%s" .Values.worker.image.repository (default .Chart.AppVersion .Values.worker.image.tag) }}
{{- end }}

{{/*
The rules the operator needs on StreamJobs and their child objects, in the namespaces it
watches. Derived from the API calls of operator/src/controller.rs, nothing more:
- streamjobs: watched; status written with server-side apply (patch on the subresource).
- statefulsets, configmaps, services: watched (the controller owns them) and written with
  server-side apply, which needs create (first apply) and patch.
- secrets: the per-job token Secret is read by name and created once; never listed or watched,
  so the operator cannot read other Secrets in bulk.
- poddisruptionbudgets: applied, and deleted when a job no longer wants one.
- events (events.k8s.io): created, and patched when a repeated event is aggregated.
No finalizers are used (child objects carry owner references and are garbage collected), so no
rule on streamjobs/finalizers is needed.
*/}}
{{- define "streamjob-operator.jobRules" -}}
# patch: the savepoint finalizer (added to jobs with savepointOnDeletion in a stateful
# upgradeMode, removed once the deletion savepoint is taken or given up).
- apiGroups: ["streamjob.dev"]
  resources: ["streamjobs"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["streamjob.dev"]
  resources: ["streamjobs/status"]
  verbs: ["patch"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create"]
# deletecollection: worker pods of an older template are replaced all at once (the
# StatefulSet's updateStrategy is OnDelete); list and watch: pods that cannot start
# (image pull errors, crash loops) are reported in the job's status.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "deletecollection"]
# list: the StatefulSet's FailedCreate events, when it cannot create the worker pods.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["list"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
