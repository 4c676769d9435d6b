{{/*
Names, labels, the parsed configuration and the checks every render runs (fg.validate, included
by the Deployment). A check that fails stops the render with a message naming the value.
*/}}

{{- define "fg.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fg.fullname" -}}
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

{{- define "fg.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fg.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "fg.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "fg.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "fg.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fg.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "fg.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "fg.sidecarImage" -}}
{{- $repo := default .Values.image.repository .Values.sidecar.image.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.sidecar.image.tag }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{/* The gateway's --config: the ConfigMap's config.toml in the mounted directory. */}}
{{- define "fg.configPath" -}}
{{- printf "%s/config.toml" (trimSuffix "/" .Values.configDir) }}
{{- end }}

{{- define "fg.sidecarConfigDir" -}}
/etc/fetcher-sidecar
{{- end }}

{{/* The configuration, parsed (JSON of the TOML): `include "fg.config" . | fromJson`. */}}
{{- define "fg.config" -}}
{{- if not (trim .Values.config) }}
{{- fail "config: required: the gateway's configuration file (TOML), e.g. --set-file config=gateway.toml" }}
{{- end }}
{{- $config := fromToml .Values.config }}
{{- if hasKey $config "Error" }}
{{- fail (printf "config: not TOML: %s" (get $config "Error")) }}
{{- end }}
{{- toJson $config }}
{{- end }}

{{/*
Seconds in a duration as the configuration writes it ("10s", "1m 30s", "500ms"; the units
humantime reads), rounded up: (list "where" "text") -> "12".
*/}}
{{- define "fg.durationSeconds" -}}
{{- $where := index . 0 }}
{{- $text := index . 1 | toString }}
{{- $units := dict "nsec" 1e-9 "ns" 1e-9 "usec" 1e-6 "us" 1e-6 "µs" 1e-6 "msec" 0.001 "ms" 0.001 "seconds" 1.0 "second" 1.0 "sec" 1.0 "secs" 1.0 "s" 1.0 "minutes" 60.0 "minute" 60.0 "min" 60.0 "mins" 60.0 "m" 60.0 "hours" 3600.0 "hour" 3600.0 "hr" 3600.0 "hrs" 3600.0 "h" 3600.0 "days" 86400.0 "day" 86400.0 "d" 86400.0 "weeks" 604800.0 "week" 604800.0 "w" 604800.0 }}
{{- $parts := regexFindAll "[0-9]+\\s*[a-zA-Zµ]+" $text -1 }}
{{- if or (not $parts) (trim (regexReplaceAll "[0-9]+\\s*[a-zA-Zµ]+" $text "")) }}
{{- fail (printf "%s: %q is not a duration such as \"10s\"" $where $text) }}
{{- end }}
{{- $total := 0.0 }}
{{- range $parts }}
{{- $n := regexFind "^[0-9]+" . }}
{{- $unit := trim (trimPrefix $n .) }}
{{- if not (hasKey $units $unit) }}
{{- fail (printf "%s: %q: unknown unit %q" $where $text $unit) }}
{{- end }}
{{- $total = addf $total (mulf (float64 $n) (get $units $unit)) }}
{{- end }}
{{- ceil $total | int }}
{{- end }}

{{/* The longest a call may take: [limits] max_deadline (default 10s), in whole seconds. */}}
{{- define "fg.maxDeadlineSeconds" -}}
{{- $config := include "fg.config" . | fromJson }}
{{- $limits := get $config "limits" | default dict }}
{{- include "fg.durationSeconds" (list "config: [limits] max_deadline" (get $limits "max_deadline" | default "10s")) }}
{{- end }}

{{- define "fg.terminationGracePeriodSeconds" -}}
{{- $shutdown := .Values.shutdown }}
{{- $drain := add (int $shutdown.preStopSleepSeconds) (int (include "fg.maxDeadlineSeconds" .)) }}
{{- if kindIs "invalid" $shutdown.terminationGracePeriodSeconds }}
{{- add $drain (int $shutdown.flushSeconds) }}
{{- else }}
{{- if lt (int $shutdown.terminationGracePeriodSeconds) $drain }}
{{- fail (printf "shutdown.terminationGracePeriodSeconds: %d is shorter than the drain, %d s (shutdown.preStopSleepSeconds %d + the configuration's [limits] max_deadline %d s): calls in flight would be killed" (int $shutdown.terminationGracePeriodSeconds) $drain (int $shutdown.preStopSleepSeconds) (int (include "fg.maxDeadlineSeconds" .))) }}
{{- end }}
{{- int $shutdown.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* The replicas a PodDisruptionBudget has to leave room in. */}}
{{- define "fg.minReplicas" -}}
{{- if .Values.autoscaling.enabled }}{{ int .Values.autoscaling.minReplicas }}{{ else }}{{ int .Values.replicaCount }}{{ end }}
{{- end }}

{{/* Every check of values against each other and against the configuration. */}}
{{- define "fg.validate" -}}
{{- $config := include "fg.config" . | fromJson }}
{{- $v := .Values }}
{{- if eq (int $v.ports.grpc) (int $v.ports.admin) }}
{{- fail (printf "ports.grpc and ports.admin: both %d; the gRPC and admin servers need a port each" (int $v.ports.grpc)) }}
{{- end }}
{{- if hasKey $v.files "config.toml" }}
{{- fail "files: `config.toml` is the configuration itself; set it with `config`" }}
{{- end }}
{{- $bytes := len $v.config }}
{{- range $v.files }}{{ $bytes = add $bytes (len .) }}{{ end }}
{{- if gt $bytes 1000000 }}
{{- fail (printf "config and files: %d bytes, more than a ConfigMap holds (1 MiB with its metadata); mount larger tables from a volume of your own (extraVolumes, extraVolumeMounts) by absolute path" $bytes) }}
{{- end }}
{{- if ne $v.service.type "ClusterIP" }}
{{- fail (printf "service.type: %s would publish the admin port (metrics, POST /admin/reload; no authentication) beyond the cluster; keep ClusterIP and put a Service of your own with only the grpc port in front" $v.service.type) }}
{{- end }}
{{- /* Autoscaling */}}
{{- if $v.autoscaling.enabled }}
{{- if lt (int $v.autoscaling.minReplicas) 1 }}
{{- fail (printf "autoscaling.minReplicas: %d; at least 1" (int $v.autoscaling.minReplicas)) }}
{{- end }}
{{- if lt (int $v.autoscaling.maxReplicas) (int $v.autoscaling.minReplicas) }}
{{- fail (printf "autoscaling.maxReplicas: %d is below autoscaling.minReplicas %d" (int $v.autoscaling.maxReplicas) (int $v.autoscaling.minReplicas)) }}
{{- end }}
{{- $requests := (($v.resources | default dict).requests | default dict) }}
{{- if not $requests.cpu }}
{{- fail "resources.requests.cpu: required with autoscaling.enabled: the autoscaler's target is a share of the CPU request" }}
{{- end }}
{{- end }}
{{- /* PodDisruptionBudget */}}
{{- if $v.podDisruptionBudget.enabled }}
{{- $pdb := $v.podDisruptionBudget }}
{{- $replicas := int (include "fg.minReplicas" .) }}
{{- $replicasName := ternary "autoscaling.minReplicas" "replicaCount" $v.autoscaling.enabled }}
{{- if eq $replicas 0 }}
{{- fail (printf "podDisruptionBudget.enabled with %s 0: a disruption budget for no pods; disable it or run replicas" $replicasName) }}
{{- end }}
{{- $hasMin := not (kindIs "invalid" $pdb.minAvailable) }}
{{- $hasMax := not (kindIs "invalid" $pdb.maxUnavailable) }}
{{- if and $hasMin $hasMax }}
{{- fail "podDisruptionBudget: set one of minAvailable and maxUnavailable (set the other to null)" }}
{{- end }}
{{- if not (or $hasMin $hasMax) }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable" }}
{{- end }}
{{- if $hasMin }}
{{- $min := toString $pdb.minAvailable }}
{{- if hasSuffix "%" $min }}
{{- if ge (int (trimSuffix "%" $min)) 100 }}
{{- fail (printf "podDisruptionBudget.minAvailable: %s allows no eviction: every node drain would wait forever" $min) }}
{{- end }}
{{- else if ge (int $min) $replicas }}
{{- fail (printf "podDisruptionBudget.minAvailable: %s is not below %s (%d): no pod could ever be evicted, and every node drain would wait forever" $min $replicasName $replicas) }}
{{- end }}
{{- end }}
{{- if $hasMax }}
{{- $max := toString $pdb.maxUnavailable }}
{{- if eq (int (trimSuffix "%" $max)) 0 }}
{{- fail (printf "podDisruptionBudget.maxUnavailable: %s allows no eviction: every node drain would wait forever" $max) }}
{{- end }}
{{- end }}
{{- end }}
{{- /* Probes and the configuration */}}
{{- $server := get $config "server" | default dict }}
{{- if hasKey $server "tls" }}
{{- fail "config: [server.tls] is set, and Kubernetes gRPC probes (probes.readiness, probes.liveness) speak plaintext only; this chart serves plaintext gRPC (terminate TLS in a mesh or at the load balancer)" }}
{{- end }}
{{- if eq $v.probes.liveness.type "grpc" }}
{{- $required := list }}
{{- range $name, $source := (get $config "sources" | default dict) }}
{{- if and (kindIs "map" $source) (get $source "required") }}
{{- $required = append $required $name }}
{{- end }}
{{- end }}
{{- if $required }}
{{- fail (printf "probes.liveness.type: grpc, with required sources (%s) in the configuration: their health turns the gateway NOT_SERVING, and a gRPC liveness probe would restart every replica while one is down; set probes.liveness.type=http (GET /healthz)" (join ", " (sortAlpha $required))) }}
{{- end }}
{{- end }}
{{- /* The sidecar */}}
{{- if $v.sidecar.enabled }}
{{- if not (trim $v.sidecar.config) }}
{{- fail "sidecar.config: required with sidecar.enabled: the sidecar's configuration file (TOML), e.g. --set-file sidecar.config=sidecar.toml" }}
{{- end }}
{{- $sidecarConfig := fromToml $v.sidecar.config }}
{{- if hasKey $sidecarConfig "Error" }}
{{- fail (printf "sidecar.config: not TOML: %s" (get $sidecarConfig "Error")) }}
{{- end }}
{{- if hasKey $v.sidecar.files "sidecar.toml" }}
{{- fail "sidecar.files: `sidecar.toml` is the sidecar's configuration itself; set it with `sidecar.config`" }}
{{- end }}
{{- if or (eq (int $v.sidecar.port) (int $v.ports.grpc)) (eq (int $v.sidecar.port) (int $v.ports.admin)) }}
{{- fail (printf "sidecar.port: %d is taken by the gateway (ports.grpc %d, ports.admin %d)" (int $v.sidecar.port) (int $v.ports.grpc) (int $v.ports.admin)) }}
{{- end }}
{{- $want := list (printf "http://127.0.0.1:%d" (int $v.sidecar.port)) (printf "http://localhost:%d" (int $v.sidecar.port)) }}
{{- $found := false }}
{{- range $name, $source := (get $config "sources" | default dict) }}
{{- if and (kindIs "map" $source) (eq (toString (get $source "kind")) "sidecar") (has (trimSuffix "/" (toString (get $source "address"))) $want) }}
{{- $found = true }}
{{- end }}
{{- end }}
{{- if not $found }}
{{- fail (printf "sidecar.enabled: the configuration (config) has no source of kind \"sidecar\" with address = \"http://127.0.0.1:%d\" (sidecar.port): nothing would call the sidecar" (int $v.sidecar.port)) }}
{{- end }}
{{- end }}
{{- /* Shutdown */}}
{{- $_ := include "fg.terminationGracePeriodSeconds" . }}
{{- end }}
