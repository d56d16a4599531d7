// Raft on Azure Functions: everything the Functions app needs, identity-based and least privilege.
//
//   Service Bus (Standard) topic, one filtered subscription per server  -> modules/servicebus.bicep
//   Storage account: host storage, deployment package, the Raft table   -> modules/storage.bicep
//   Log Analytics + workspace-based Application Insights               -> modules/monitoring.bicep
//   Flex Consumption plan and Function App (Python 3.13)               -> modules/functionapp.bicep
//   Data-plane role assignments for the app (and optionally a developer) -> modules/roles.bicep
//   Alerts: dead-lettered messages, failed invocations                  -> modules/alerts.bicep
//
// Setting names and defaults mirror raft/hosts/settings.py; tests/test_infra.py checks that.

targetScope = 'resourceGroup'

@description('Short prefix for resource names: lowercase letters and digits, starting with a letter.')
@minLength(3)
@maxLength(12)
param namePrefix string = 'raft'

@description('Azure region for every resource; it must offer the Flex Consumption plan.')
param location string = resourceGroup().location

@description('Number of Raft servers, hence Service Bus subscriptions (server-1 .. server-N).')
@allowed([
  3
  5
  7
])
param clusterSize int = 5

@description('Servers with a subscription and a trigger: clusterSize of them form the first configuration, the rest are spares that join when added (POST /api/cluster/servers), so a cluster grows without a redeployment.')
@minValue(3)
@maxValue(15)
param maxClusterSize int = 7

@description('Service Bus topic that carries every Raft message.')
param topicName string = 'rafttopic'

@description('Table Storage table that holds the Raft log and server state.')
param tableName string = 'raftstate'

@description('Time to live of a Raft message, in seconds; also the topic/subscription default.')
@minValue(10)
@maxValue(3600)
param messageTtlSeconds int = 120

@description('Upper bound on Function App instances.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Concurrent HTTP calls one instance serves; each POST may wait RAFT_HTTP_WAIT_S for its commit, mostly asleep (docs/deploy.md, "HTTP concurrency").')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = 16

@description('Memory of each Function App instance, in MB; 512 cuts the GB-s bill by 4x (docs/deploy.md, "What it costs per month").')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Send the Function App\'s FunctionAppLogs to Log Analytics through a diagnostic setting.')
param enableFunctionAppDiagnostics bool = true

@description('Object id of a developer (or CI principal) to grant the data roles for local runs; empty for none.')
param developerPrincipalId string = ''

@description('Principal type of developerPrincipalId: azd passes AZURE_PRINCIPAL_TYPE (ServicePrincipal when it signs in as one).')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param developerPrincipalType string = 'User'

@description('E-mail address the alerts notify; empty to only show them in the portal.')
param alertEmail string = ''

@description('azd environment name, recorded as a tag; empty outside azd.')
param environmentName string = ''

var suffix = uniqueString(resourceGroup().id, namePrefix)
var baseTags = { project: 'raft-azure-functions' }
var tags = empty(environmentName) ? baseTags : union(baseTags, { 'azd-env-name': environmentName })

var names = {
  serviceBus: '${namePrefix}-sb-${suffix}'
  storage: take('st${namePrefix}${suffix}', 24)
  workspace: '${namePrefix}-log-${suffix}'
  appInsights: '${namePrefix}-appi-${suffix}'
  plan: '${namePrefix}-plan-${suffix}'
  functionApp: '${namePrefix}-func-${suffix}'
  deploymentContainer: 'app-package'
}

// Server ids are the subscription names: settings.server_ids(count) -> server-1 .. server-N.
var subscriptionCount = max(clusterSize, maxClusterSize)
var serverIds = [for i in range(1, subscriptionCount): 'server-${i}']

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    location: location
    workspaceName: names.workspace
    appInsightsName: names.appInsights
    tags: tags
  }
}

module serviceBus 'modules/servicebus.bicep' = {
  name: 'serviceBus'
  params: {
    location: location
    namespaceName: names.serviceBus
    topicName: topicName
    subscriptionNames: serverIds
    addresseeProperty: 'addressee'
    ruleName: 'addressee'
    messageTtlSeconds: messageTtlSeconds
    maxDeliveryCount: 10
    duplicateDetectionWindow: 'PT10M'
    workspaceId: monitoring.outputs.workspaceId
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    location: location
    accountName: names.storage
    deploymentContainerName: names.deploymentContainer
    tableName: tableName
    tags: tags
  }
}

// Every setting the app reads (raft/hosts/settings.py). Connections are identity-based:
// no connection string, account key or SAS appears here.
var appSettings = {
  AzureWebJobsStorage__accountName: storage.outputs.accountName
  RaftStorage__tableServiceUri: storage.outputs.tableEndpoint
  RaftStorage__accountName: storage.outputs.accountName
  ServiceBusConnection__fullyQualifiedNamespace: serviceBus.outputs.fullyQualifiedNamespace
  APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.appInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD'
  // The Python worker configures azure-monitor-opentelemetry (requirements.txt) itself.
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
  // A thread per concurrent HTTP call (the worker's default is a handful).
  PYTHON_THREADPOOL_THREAD_COUNT: string(httpPerInstanceConcurrency)
  RAFT_SERVER_COUNT: string(clusterSize)
  RAFT_MAX_SERVERS: string(subscriptionCount)
  RAFT_TOPIC: topicName
  RAFT_TABLE: tableName
  RAFT_TIMER_SCHEDULE: '*/1 * * * * *'
  RAFT_ELECTION_TIMEOUT_MS: '6000'
  RAFT_HEARTBEAT_MS: '1000'
  RAFT_HTTP_WAIT_S: '20'
  RAFT_MAX_COMMAND_BYTES: '16384'
  RAFT_MESSAGE_TTL_S: string(messageTtlSeconds)
  RAFT_SESSION_RETENTION_S: '900'
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionApp'
  params: {
    location: location
    planName: names.plan
    appName: names.functionApp
    deploymentContainerUrl: storage.outputs.deploymentContainerUrl
    appSettings: appSettings
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    httpPerInstanceConcurrency: httpPerInstanceConcurrency
    workspaceId: monitoring.outputs.workspaceId
    enableDiagnosticSettings: enableFunctionAppDiagnostics
    tags: tags
    appTags: { 'azd-service-name': 'api' }
  }
}

module appRoles 'modules/roles.bicep' = {
  name: 'appRoles'
  params: {
    principalId: functionApp.outputs.principalId
    principalType: 'ServicePrincipal'
    includeHostRoles: true
    serviceBusNamespaceName: serviceBus.outputs.namespaceName
    topicName: serviceBus.outputs.topicName
    subscriptionNames: serverIds
    storageAccountName: storage.outputs.accountName
    appInsightsName: monitoring.outputs.appInsightsName
  }
}

module developerRoles 'modules/roles.bicep' = if (!empty(developerPrincipalId)) {
  name: 'developerRoles'
  params: {
    principalId: developerPrincipalId
    principalType: developerPrincipalType
    includeHostRoles: false
    serviceBusNamespaceName: serviceBus.outputs.namespaceName
    topicName: serviceBus.outputs.topicName
    subscriptionNames: serverIds
    storageAccountName: storage.outputs.accountName
    appInsightsName: monitoring.outputs.appInsightsName
  }
}

module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  params: {
    location: location
    serviceBusNamespaceName: serviceBus.outputs.namespaceName
    appInsightsName: monitoring.outputs.appInsightsName
    alertEmail: alertEmail
    tags: tags
  }
}

@description('Name of the Function App.')
output functionAppName string = functionApp.outputs.name

@description('Base URL of the HTTP API.')
output httpEndpoint string = 'https://${functionApp.outputs.defaultHostName}/api'

@description('Fully-qualified Service Bus namespace (ServiceBusConnection__fullyQualifiedNamespace).')
output serviceBusNamespace string = serviceBus.outputs.fullyQualifiedNamespace

@description('Storage account name.')
output storageAccountName string = storage.outputs.accountName

@description('Table service endpoint (RaftStorage__tableServiceUri).')
output tableServiceUri string = storage.outputs.tableEndpoint

@description('Service Bus topic name (RAFT_TOPIC).')
output topicName string = serviceBus.outputs.topicName
