{{/* Names: every object is prefixed with the release's full name, so two releases never collide. */}}
{{- define "agentq.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "agentq.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "agentq.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* A fixed tag, so every node runs the same bits and a rollback means something. */}}
{{- define "agentq.image" -}}
{{- if eq .tag "latest" -}}
{{- fail (printf "image %s: tag \"latest\" is not allowed; pin a version" .repository) -}}
{{- end -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/* The peering name: per release by default, so two releases' operators never pause each other. */}}
{{- define "agentq.peering" -}}
{{- .Values.operator.peering | default (include "agentq.fullname" .) -}}
{{- end -}}

{{- define "agentq.sandboxTokenSecret" -}}
{{- .Values.sandbox.token.existingSecret | default (printf "%s-sandbox-token" (include "agentq.fullname" .)) -}}
{{- end -}}

{{- define "agentq.sandboxUrl" -}}
{{- if .Values.sandbox.url -}}
{{- .Values.sandbox.url -}}
{{- else -}}
{{- printf "http://%s-sandbox.%s.svc:%v" (include "agentq.fullname" .) .Release.Namespace .Values.sandbox.port -}}
{{- end -}}
{{- end -}}

{{/* Pod-level hardening shared by the operator and the sandbox: non-root, RuntimeDefault seccomp. */}}
{{- define "agentq.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "agentq.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
{{- end -}}

{{/* The sandbox container in isolation.mode bubblewrap: locked down like the others, with an unmasked /proc so
bubblewrap can mount a fresh one for each worker (a masked /proc makes the kernel refuse that mount in a user
namespace). */}}
{{- define "agentq.sandboxContainerSecurity" -}}
{{ include "agentq.containerSecurity" . }}
procMount: Unmasked
{{- end -}}

{{/* The dashboard's bearer-token Secret: the user's own, or the one this chart makes. */}}
{{- define "agentq.dashboardSecret" -}}
{{- .Values.dashboard.auth.existingSecret | default (printf "%s-dashboard-token" (include "agentq.fullname" .)) -}}
{{- end -}}

{{/* What the dashboard's --store gets: dashboard.store, else the artifacts PVC mounted at /artifacts. */}}
{{- define "agentq.dashboardStore" -}}
{{- .Values.dashboard.store | default "/artifacts" -}}
{{- end -}}

{{- define "agentq.dashboardUrl" -}}
{{- printf "http://%s-dashboard.%s.svc:%v" (include "agentq.fullname" .) .Release.Namespace .Values.dashboard.port -}}
{{- end -}}
