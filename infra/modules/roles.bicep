// Data-plane role assignments for one principal, each scoped as narrowly as the service allows:
//   - on each server's subscription (a topic trigger needs the subscription in scope; Service
//     Bus RBAC can be scoped to a single subscription): for the Function App, Azure Service Bus
//     Data Owner, the least built-in role that carries the Manage right the trigger's scale
//     metrics read (the subscription's runtime properties; with Receive alone the extension
//     falls back to peeking and says it lacks Manage); for a developer, Data Receiver,
//   - Azure Service Bus Data Sender on the topic,
//   - Storage Table Data Contributor on the storage account (the Raft table and the host's
//     diagnostic-event tables live there),
//   - host only: Storage Blob Data Owner on the storage account (AzureWebJobsStorage: leases,
//     keys and the deployment package) and Monitoring Metrics Publisher on Application Insights.
// Role definition ids are Azure built-in roles (the same in every tenant).

@description('Object id of the principal that receives the roles.')
param principalId string

@description('ServicePrincipal for the Function App identity, User for a developer.')
@allowed([
  'ServicePrincipal'
  'User'
  'Group'
])
param principalType string = 'ServicePrincipal'

@description('The Function App itself: also grant what only the Functions host needs (Manage on the subscriptions for scaling, blob owner, metrics publisher).')
param includeHostRoles bool = true

@description('Service Bus namespace name.')
param serviceBusNamespaceName string

@description('Topic name.')
param topicName string

@description('Subscription names, one per server.')
param subscriptionNames array

@description('Storage account name.')
param storageAccountName string

@description('Application Insights component name.')
param appInsightsName string

var roleIds = {
  serviceBusDataOwner: '090c5cfd-751d-490a-894a-3ce6f1109419'
  serviceBusDataReceiver: '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'
  serviceBusDataSender: '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' existing = {
  name: serviceBusNamespaceName
}

resource topic 'Microsoft.ServiceBus/namespaces/topics@2024-01-01' existing = {
  parent: namespace
  name: topicName
}

resource subscriptions 'Microsoft.ServiceBus/namespaces/topics/subscriptions@2024-01-01' existing = [
  for name in subscriptionNames: {
    parent: topic
    name: name
  }
]

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

// Only the Functions host scales on the subscriptions' runtime properties.
var subscriptionRole = includeHostRoles ? roleIds.serviceBusDataOwner : roleIds.serviceBusDataReceiver

resource receiverOnSubscription 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (name, i) in subscriptionNames: {
    name: guid(subscriptions[i].id, principalId, subscriptionRole)
    scope: subscriptions[i]
    properties: {
      principalId: principalId
      principalType: principalType
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', subscriptionRole)
    }
  }
]

resource senderOnTopic 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(topic.id, principalId, roleIds.serviceBusDataSender)
  scope: topic
  properties: {
    principalId: principalId
    principalType: principalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.serviceBusDataSender)
  }
}

resource tableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, principalId, roleIds.storageTableDataContributor)
  scope: storageAccount
  properties: {
    principalId: principalId
    principalType: principalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageTableDataContributor)
  }
}

resource blobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (includeHostRoles) {
  name: guid(storageAccount.id, principalId, roleIds.storageBlobDataOwner)
  scope: storageAccount
  properties: {
    principalId: principalId
    principalType: principalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageBlobDataOwner)
  }
}

resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (includeHostRoles) {
  name: guid(appInsights.id, principalId, roleIds.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    principalId: principalId
    principalType: principalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.monitoringMetricsPublisher)
  }
}
