{{/* Names, labels and the image reference shared by every template. */}}

{{- define "dragonfly.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name prefix, at most 40 characters, so that suffixed names (-headless, -operator-metrics, -dfget)
and the controller-revision-hash label values of the StatefulSet and DaemonSet stay within 63 characters.
*/}}
{{- define "dragonfly.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "dragonfly.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dragonfly.headlessName" -}}
{{- printf "%s-headless" (include "dragonfly.fullname" .) -}}
{{- end -}}

{{- define "dragonfly.operatorName" -}}
{{- printf "%s-operator" (include "dragonfly.fullname" .) -}}
{{- end -}}

{{- define "dragonfly.dfgetName" -}}
{{- printf "%s-dfget" (include "dragonfly.fullname" .) -}}
{{- end -}}

{{/* Labels of every resource; call with (dict "ctx" $ "component" "supernode"). */}}
{{- define "dragonfly.labels" -}}
helm.sh/chart: {{ include "dragonfly.chart" .ctx }}
{{ include "dragonfly.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: dragonfly
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels; call with (dict "ctx" $ "component" "supernode"). */}}
{{- define "dragonfly.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dragonfly.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "dragonfly.image" -}}
{{- $repo := .Values.image.repository -}}
{{- if .Values.image.registry -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" .Values.image.registry) $repo -}}
{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "dragonfly.supernodeServiceAccountName" -}}
{{- if .Values.supernode.serviceAccount.create -}}
{{- default (include "dragonfly.fullname" .) .Values.supernode.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.supernode.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "dragonfly.operatorServiceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "dragonfly.operatorName" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The supernodes' API URLs by stable pod DNS name, for NOTES and docs. */}}
{{- define "dragonfly.supernodeNodes" -}}
{{- $full := include "dragonfly.fullname" . -}}
{{- $headless := include "dragonfly.headlessName" . -}}
{{- $nodes := list -}}
{{- range $i := until (int .Values.supernode.replicas) -}}
{{- $nodes = append $nodes (printf "%s-%d.%s.%s.svc:%d" $full $i $headless $.Release.Namespace (int $.Values.supernode.ports.api)) -}}
{{- end -}}
{{- join "," $nodes -}}
{{- end -}}

{{/*
The operator's rules on Preheats, their Secrets and Events, for a ClusterRole or a per-namespace Role.
kopf patches the Preheat itself (its finalizer and its progress annotations) and the status subresource;
it never creates, updates (PUT) or deletes Preheats.
*/}}
{{- define "dragonfly.operatorPreheatRules" -}}
- apiGroups: [dragonfly.d7y.io]
  resources: [preheats]
  verbs: [get, list, watch, patch]
- apiGroups: [dragonfly.d7y.io]
  resources: [preheats/status]
  verbs: [get, patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- if .Values.operator.rbac.readSecrets }}
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
  {{- with .Values.operator.rbac.secretNames }}
  resourceNames:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}
