{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "device-taint-eviction.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects. A release named like the chart is not repeated.
*/}}
{{- define "device-taint-eviction.fullname" -}}
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

{{- define "device-taint-eviction.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "device-taint-eviction.labels" -}}
helm.sh/chart: {{ include "device-taint-eviction.chart" . }}
{{ include "device-taint-eviction.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels that select the controller pods; they must never change between upgrades.
*/}}
{{- define "device-taint-eviction.selectorLabels" -}}
app.kubernetes.io/name: {{ include "device-taint-eviction.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "device-taint-eviction.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "device-taint-eviction.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Namespace of the leader-election Lease, and so of the Role that grants access to it.
*/}}
{{- define "device-taint-eviction.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace }}
{{- end }}

{{/*
The --http-addr value; an IPv6 host gets brackets.
*/}}
{{- define "device-taint-eviction.httpAddr" -}}
{{- if contains ":" .Values.http.address }}
{{- printf "[%s]:%d" (trimAll "[]" .Values.http.address) (int .Values.http.port) }}
{{- else }}
{{- printf "%s:%d" .Values.http.address (int .Values.http.port) }}
{{- end }}
{{- end }}

{{/*
Combinations the schema cannot express; rendering fails with a readable message.
*/}}
{{- define "device-taint-eviction.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: without a leader every replica would evict" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.service.enabled) }}
{{- fail "serviceMonitor.enabled needs service.enabled=true: the ServiceMonitor scrapes the metrics Service" }}
{{- end }}
{{- end }}

{{/*
The controller's command line as a JSON list, one flag per controller value. Every flag is passed
explicitly (only the --dry-run switch and --protected-priority are omitted when off), so the chart's defaults are the ones in
force even if the binary's defaults change. Built as a list, not as YAML text, so that no value
(a log filter with ":" or ",") can break the manifest.
*/}}
{{- define "device-taint-eviction.args" -}}
{{- $c := .Values.controller }}
{{- $le := .Values.leaderElection }}
{{- $args := list "controller" }}
{{- $args = append $args (printf "--concurrent-device-taint-eviction-syncs=%d" (int64 $c.concurrentDeviceTaintEvictionSyncs)) }}
{{- $args = append $args (printf "--eviction-mode=%s" $c.evictionMode) }}
{{- $args = append $args (printf "--max-evictions-per-second=%v" $c.maxEvictionsPerSecond) }}
{{- $args = append $args (printf "--max-evictions-burst=%d" (int64 $c.maxEvictionsBurst)) }}
{{- if not (kindIs "invalid" $c.protectedPriority) }}
{{- $args = append $args (printf "--protected-priority=%d" (int64 $c.protectedPriority)) }}
{{- end }}
{{- if $c.dryRun }}
{{- $args = append $args "--dry-run" }}
{{- end }}
{{- $args = append $args (printf "--http-addr=%s" (include "device-taint-eviction.httpAddr" .)) }}
{{- $args = append $args (printf "--leader-elect=%t" $le.enabled) }}
{{- if $le.enabled }}
{{- $args = append $args (printf "--leader-elect-namespace=%s" (include "device-taint-eviction.leaseNamespace" .)) }}
{{- $args = append $args (printf "--leader-elect-lease-name=%s" $le.leaseName) }}
{{- $args = append $args (printf "--leader-elect-lease-duration=%d" (int64 $le.leaseDuration)) }}
{{- end }}
{{- $args = append $args (printf "--kube-api-qps=%v" $c.kubeApiQps) }}
{{- $args = append $args (printf "--kube-api-burst=%d" (int64 $c.kubeApiBurst)) }}
{{- $g := .Values.guard }}
{{- $args = append $args (printf "--guard-window=%v" $g.window) }}
{{- $args = append $args (printf "--guard-min-pods=%d" (int64 $g.minPods)) }}
{{- $args = append $args (printf "--guard-max-percent=%v" $g.maxPercent) }}
{{- $args = append $args (printf "--guard-max-pods=%d" (int64 $g.maxPods)) }}
{{- range $g.acceptPools }}
{{- $args = append $args (printf "--guard-accept-pool=%s" .) }}
{{- end }}
{{- if not (kindIs "invalid" $g.acceptCluster) }}
{{- $args = append $args (printf "--guard-accept-cluster=%d" (int64 $g.acceptCluster)) }}
{{- end }}
{{- $args = append $args (printf "--log-format=%s" .Values.logging.format) }}
{{- $args = append $args (printf "--log-level=%s" .Values.logging.level) }}
{{- concat $args .Values.extraArgs | toJson }}
{{- end }}
