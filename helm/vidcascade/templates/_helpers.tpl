{{/*
Names, labels and the pieces every component's pod shares. A "component" below is a dict:
  root   the chart's root context
  name   gateway | encoder | the stage's name
  kind   gateway | encoder | stage
  values the component's block (for a stage: stageDefaults merged with its stages[] entry)
*/}}

{{- define "vidcascade.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vidcascade.fullname" -}}
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

{{/* Resource name of a component: <fullname>-gateway, <fullname>-encoder, <fullname>-stage-<name>. */}}
{{- define "vidcascade.componentName" -}}
{{- $full := include "vidcascade.fullname" .root }}
{{- if eq .kind "stage" }}
{{- printf "%s-stage-%s" $full .name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" $full .name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Labels of every resource, without the selector labels. */}}
{{- define "vidcascade.baseLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: {{ include "vidcascade.name" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of a resource that belongs to no one component. */}}
{{- define "vidcascade.labels" -}}
{{ include "vidcascade.baseLabels" . }}
app.kubernetes.io/name: {{ include "vidcascade.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of a component (stable across upgrades). */}}
{{- define "vidcascade.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vidcascade.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ ternary (printf "stage-%s" .name) .name (eq .kind "stage") }}
{{- end }}

{{- define "vidcascade.componentLabels" -}}
{{ include "vidcascade.baseLabels" .root }}
{{ include "vidcascade.selectorLabels" . }}
vidcascade.io/model: {{ .root.Values.model.name | quote }}
{{- if eq .kind "stage" }}
vidcascade.io/stage: {{ .name | quote }}
{{- end }}
{{- end }}

{{- define "vidcascade.serviceAccountName" -}}
{{- default (printf "%s-gateway" (include "vidcascade.fullname" .)) .Values.serviceAccount.name }}
{{- end }}

{{/* Every stage as a component dict, stageDefaults merged under its entry. */}}
{{- define "vidcascade.stageValues" -}}
{{- mergeOverwrite (deepCopy .root.Values.stageDefaults) (deepCopy .stage) | toYaml }}
{{- end }}

{{/* The DNS name of a component's Service. */}}
{{- define "vidcascade.serviceHost" -}}
{{- printf "%s.%s.svc" (include "vidcascade.componentName" .) .root.Release.Namespace }}
{{- end }}

{{/* The gateway's target for a component: an EndpointSlice watch or DNS of its headless Service. */}}
{{- define "vidcascade.target" -}}
{{- if eq .root.Values.gateway.discovery "kube" -}}
kube://{{ include "vidcascade.componentName" . }}.{{ .root.Release.Namespace }}:{{ .root.Values.ports.grpc }}
{{- else -}}
dns:{{ include "vidcascade.serviceHost" . }}:{{ .root.Values.ports.grpc }}
{{- end }}
{{- end }}

{{- define "vidcascade.image" -}}
{{- $tag := default .root.Chart.AppVersion .root.Values.image.tag }}
{{- printf "%s/%s:%s" .root.Values.image.registry .values.image.name $tag }}
{{- end }}

{{/* Flags every service takes: addresses, drain, TLS. */}}
{{- define "vidcascade.commonArgs" -}}
- --listen=0.0.0.0:{{ .root.Values.ports.grpc }}
- --metrics-listen=0.0.0.0:{{ .root.Values.ports.metrics }}
- --drain-grace-seconds={{ .root.Values.maxGenerationSeconds }}
- --log-format=json
{{- if .root.Values.tls.enabled }}
- --tls-cert=/etc/vidcascade/tls/tls.crt
- --tls-key=/etc/vidcascade/tls/tls.key
{{- if and .root.Values.tls.mutual (ne .kind "gateway") }}
- --tls-client-ca=/etc/vidcascade/tls/ca.crt
{{- end }}
{{- end }}
{{- end }}

{{/*
Probes. Without TLS they are native gRPC probes on grpc.health.v1 (SERVING only after warm-up);
with TLS (which the kubelet's gRPC probe does not speak) they ask the plaintext metrics port's
/readyz and /healthz, which follow the same health state.
*/}}
{{- define "vidcascade.probe" -}}
{{- $p := .probe }}
{{- if .root.Values.tls.enabled -}}
httpGet:
  path: {{ .path }}
  port: metrics
{{- else -}}
grpc:
  port: {{ .root.Values.ports.grpc }}
{{- end }}
periodSeconds: {{ $p.periodSeconds }}
failureThreshold: {{ $p.failureThreshold }}
timeoutSeconds: {{ default 2 $p.timeoutSeconds }}
{{- end }}

{{/* The model repository volume. */}}
{{- define "vidcascade.modelVolume" -}}
- name: model
{{- $m := .Values.model }}
{{- if eq $m.source "pvc" }}
  persistentVolumeClaim:
    claimName: {{ $m.pvc.claimName }}
    readOnly: true
{{- else if eq $m.source "image" }}
{{- if semverCompare "<1.31.0-0" .Capabilities.KubeVersion.Version }}
{{- fail "model.source=image needs Kubernetes 1.31 or newer (image volumes); use pvc" }}
{{- end }}
  image:
    reference: {{ $m.image.reference }}
    pullPolicy: {{ $m.image.pullPolicy }}
{{- else }}
  hostPath:
    path: {{ $m.hostPath.path }}
    type: Directory
{{- end }}
{{- end }}

{{/* The model's path inside the pod. */}}
{{- define "vidcascade.modelPath" -}}
{{- if and (eq .Values.model.source "pvc") .Values.model.pvc.subPath -}}
{{ .Values.model.mountPath }}/{{ .Values.model.pvc.subPath }}
{{- else -}}
{{ .Values.model.mountPath }}
{{- end }}
{{- end }}

{{/*
A component's Deployment. Extra flags come in .args (a list); .ports lists extra container ports.
*/}}
{{- define "vidcascade.deployment" -}}
{{- $root := .root }}
{{- $v := .values }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "vidcascade.componentName" . }}
  labels:
    {{- include "vidcascade.componentLabels" . | nindent 4 }}
spec:
  {{- if not $v.autoscaling.enabled }}
  replicas: {{ $v.replicas }}
  {{- end }}
  revisionHistoryLimit: 3
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}
  selector:
    matchLabels:
      {{- include "vidcascade.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "vidcascade.componentLabels" . | nindent 8 }}
      {{- with $v.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      {{- if eq .kind "gateway" }}
      serviceAccountName: {{ include "vidcascade.serviceAccountName" $root }}
      {{- else }}
      automountServiceAccountToken: false
      {{- end }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      # Longer than the longest generation: the service drains (finishes in-flight work) first.
      terminationGracePeriodSeconds: {{ add $root.Values.maxGenerationSeconds 30 }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ .kind }}
          image: {{ include "vidcascade.image" . }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args:
            {{- include "vidcascade.commonArgs" . | nindent 12 }}
            {{- with .args }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- with $v.extraArgs }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- if or $v.threads $v.extraEnv }}
          env:
            {{- with $v.threads }}
            - {name: RAYON_NUM_THREADS, value: {{ . | quote }}}
            {{- end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- end }}
          ports:
            - {name: grpc, containerPort: {{ $root.Values.ports.grpc }}, protocol: TCP}
            - {name: metrics, containerPort: {{ $root.Values.ports.metrics }}, protocol: TCP}
            {{- with .ports }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          startupProbe:
            {{- include "vidcascade.probe" (dict "root" $root "probe" $v.probes.startup "path" "/readyz") | nindent 12 }}
          readinessProbe:
            {{- include "vidcascade.probe" (dict "root" $root "probe" $v.probes.readiness "path" "/readyz") | nindent 12 }}
          livenessProbe:
            {{- include "vidcascade.probe" (dict "root" $root "probe" $v.probes.liveness "path" "/healthz") | nindent 12 }}
          lifecycle:
            # Endpoints take a moment to drop a terminating pod; new calls may still arrive.
            preStop:
              sleep: {seconds: 5}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - {name: tmp, mountPath: /tmp}
            - {name: model, mountPath: {{ $root.Values.model.mountPath }}, readOnly: true}
            {{- if $root.Values.tls.enabled }}
            - {name: tls, mountPath: /etc/vidcascade/tls, readOnly: true}
            {{- end }}
            {{- if and (eq .kind "gateway") $root.Values.apiKeys.secretName }}
            - {name: api-keys, mountPath: /etc/vidcascade/api-keys, readOnly: true}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir: {}
        {{- include "vidcascade.modelVolume" $root | nindent 8 }}
        {{- if $root.Values.tls.enabled }}
        - name: tls
          secret:
            secretName: {{ $root.Values.tls.secretName }}
        {{- end }}
        {{- if and (eq .kind "gateway") $root.Values.apiKeys.secretName }}
        - name: api-keys
          secret:
            secretName: {{ $root.Values.apiKeys.secretName }}
        {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}

{{/* A component's PodDisruptionBudget. */}}
{{- define "vidcascade.pdb" -}}
{{- if .values.pdb.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "vidcascade.componentName" . }}
  labels:
    {{- include "vidcascade.componentLabels" . | nindent 4 }}
spec:
  maxUnavailable: {{ .values.pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "vidcascade.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end }}

{{/* A CPU-based HPA (gateway, encoder). */}}
{{- define "vidcascade.cpuHpa" -}}
{{- $a := .values.autoscaling }}
{{- if $a.enabled }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "vidcascade.componentName" . }}
  labels:
    {{- include "vidcascade.componentLabels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "vidcascade.componentName" . }}
  minReplicas: {{ $a.minReplicas }}
  maxReplicas: {{ $a.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $a.targetCPUUtilization }}
  behavior:
    scaleDown:
      stabilizationWindowSeconds: {{ $a.scaleDownStabilizationSeconds }}
{{- end }}
{{- end }}

{{/*
A headless Service: the gateway balances per call over its pods' addresses (one HTTP/2
connection to a ClusterIP would pin every call to one pod). Not-ready pods are left out.
*/}}
{{- define "vidcascade.headlessService" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "vidcascade.componentName" . }}
  labels:
    {{- include "vidcascade.componentLabels" . | nindent 4 }}
spec:
  clusterIP: None
  publishNotReadyAddresses: false
  selector:
    {{- include "vidcascade.selectorLabels" . | nindent 4 }}
  ports:
    - {name: grpc, port: {{ .root.Values.ports.grpc }}, targetPort: grpc, protocol: TCP, appProtocol: grpc}
    - {name: metrics, port: {{ .root.Values.ports.metrics }}, targetPort: metrics, protocol: TCP}
{{- end }}

{{/* The PromQL of a stage's queued work, summed over its replicas. */}}
{{- define "vidcascade.queuedWorkQuery" -}}
sum(vidcascade_stage_queued_work_seconds{namespace="{{ .root.Release.Namespace }}",stage="{{ .name }}"})
{{- end }}
