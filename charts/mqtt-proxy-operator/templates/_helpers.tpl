{{/* Names and labels shared by every template. */}}

{{- define "mqtt-proxy-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mqtt-proxy-operator.fullname" -}}
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

{{- define "mqtt-proxy-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mqtt-proxy-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mqtt-proxy-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "mqtt-proxy-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: mqtt-proxy
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Objects the chart creates for the user (example CRs): whose release, not the operator's labels. */}}
{{- define "mqtt-proxy-operator.releaseLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mqtt-proxy-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mqtt-proxy-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mqtt-proxy-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "mqtt-proxy-operator.proxyImage" -}}
{{- printf "%s:%s" .Values.proxyImage.repository (default .Chart.AppVersion .Values.proxyImage.tag) }}
{{- end }}

{{- define "mqtt-proxy-operator.webhookName" -}}
{{- printf "%s-webhook" (include "mqtt-proxy-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret holding the webhook's CA (created and rotated by the operator). */}}
{{- define "mqtt-proxy-operator.webhookCaSecret" -}}
{{- printf "%s-ca" (include "mqtt-proxy-operator.webhookName" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The API calls the operator makes on namespaced resources, and nothing more: operator/RBAC.md
lists them and tests/packaging/check_rbac.py fails when these rules and that file differ.
Granted by a ClusterRole when watchNamespaces is empty, else by a Role in the namespace.
`create` goes with every server-side-applied kind: applying an object that does not exist
yet is a PATCH, but the API server authorizes that request as create too (a forbidden error
without it; tests/packaging/helm_chart.rs applies as this ServiceAccount to prove it).
*/}}
{{- define "mqtt-proxy-operator.namespacedRules" -}}
- apiGroups: ["mqttproxy.io"]
  resources: ["mqttproxies", "mqttbrokers"]
  verbs: ["list", "watch"]
- apiGroups: ["mqttproxy.io"]
  resources: ["mqttproxies/status", "mqttbrokers/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["create", "patch"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["create", "patch"]
{{- /* Held so that the operator may grant them to the proxy pods (mirror Lease). */}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end }}

{{/* Cluster-scoped API calls: none today (CRD presence is checked by listing the custom
     resources, ServiceMonitor support through discovery, which every client may read). */}}
{{- define "mqtt-proxy-operator.clusterRules" -}}
{{- end }}

{{/* Sidecar mode: the operator keeps the webhook's caBundle current (its own configuration only).
     Its CA Secret lives in the release namespace: covered by the namespaced rules when every
     namespace is watched, else by the Role `<fullname>-webhook-ca` (rbac.yaml). */}}
{{- define "mqtt-proxy-operator.webhookRules" -}}
- apiGroups: ["admissionregistration.k8s.io"]
  resources: ["mutatingwebhookconfigurations"]
  resourceNames: [{{ include "mqtt-proxy-operator.webhookName" . | quote }}]
  verbs: ["get", "patch"]
{{- end }}
