// Service Bus namespace, the Raft topic and one filtered subscription per server.
//
// Each subscription gets a rule named after raft.hosts.settings.SUBSCRIPTION_RULE: a
// correlation filter matching the application property
// raft.adapters.servicebus_bus.ADDRESSEE_PROPERTY against the server's id.
// Service Bus gives every new subscription a '$Default' TrueFilter rule; ARM cannot delete a
// rule declaratively, so the template also declares '$Default' itself with a filter that never
// matches (1=0). Whichever order the platform applies these in, no catch-all rule remains.

@description('Azure region for the namespace.')
param location string

@description('Service Bus namespace name (6-50 characters, globally unique).')
@minLength(6)
@maxLength(50)
param namespaceName string

@description('Topic that carries every Raft message (settings.DEFAULTS[RAFT_TOPIC]).')
param topicName string

@description('Subscription names, one per server: server-1 .. server-N (settings.server_ids).')
param subscriptionNames array

@description('Application property every message carries naming its addressee.')
param addresseeProperty string = 'addressee'

@description('Name of the correlation-filter rule on each subscription.')
param ruleName string = 'addressee'

@description('Default time to live of a message, in seconds (settings RAFT_MESSAGE_TTL_S).')
@minValue(1)
param messageTtlSeconds int

@description('Deliveries before a message is dead-lettered.')
@minValue(1)
@maxValue(100)
param maxDeliveryCount int = 10

@description('Window in which the topic drops a message whose MessageId it has already seen.')
param duplicateDetectionWindow string = 'PT10M'

@description('Log Analytics workspace that receives the namespace logs.')
param workspaceId string

@description('Tags applied to every resource.')
param tags object = {}

var messageTtl = 'PT${messageTtlSeconds}S'

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: namespaceName
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
  }
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    minimumTlsVersion: '1.2'
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
  }
}

resource topic 'Microsoft.ServiceBus/namespaces/topics@2024-01-01' = {
  parent: namespace
  name: topicName
  properties: {
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: duplicateDetectionWindow
    defaultMessageTimeToLive: messageTtl
    enableBatchedOperations: true
    supportOrdering: false
  }
}

resource subscriptions 'Microsoft.ServiceBus/namespaces/topics/subscriptions@2024-01-01' = [
  for name in subscriptionNames: {
    parent: topic
    name: name
    properties: {
      deadLetteringOnMessageExpiration: true
      deadLetteringOnFilterEvaluationExceptions: true
      maxDeliveryCount: maxDeliveryCount
      defaultMessageTimeToLive: messageTtl
      // settings.MESSAGE_LOCK_S: a batch trigger cannot renew its locks, so host.json's
      // functionTimeout stops every invocation well before this expires.
      lockDuration: 'PT1M'
      requiresSession: false
    }
  }
]

resource addresseeRules 'Microsoft.ServiceBus/namespaces/topics/subscriptions/rules@2024-01-01' = [
  for (name, i) in subscriptionNames: {
    parent: subscriptions[i]
    name: ruleName
    properties: {
      filterType: 'CorrelationFilter'
      correlationFilter: {
        properties: {
          '${addresseeProperty}': name
        }
      }
    }
  }
]

resource defaultRules 'Microsoft.ServiceBus/namespaces/topics/subscriptions/rules@2024-01-01' = [
  for (name, i) in subscriptionNames: {
    parent: subscriptions[i]
    name: '$Default'
    properties: {
      filterType: 'SqlFilter'
      sqlFilter: {
        sqlExpression: '1=0'
      }
    }
    dependsOn: [
      addresseeRules[i]
    ]
  }
]

resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: namespace
  properties: {
    workspaceId: workspaceId
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

output namespaceName string = namespace.name
// serviceBusEndpoint is https://<name>.servicebus.windows.net:443/ (or a sovereign cloud's host).
output fullyQualifiedNamespace string = split(split(namespace.properties.serviceBusEndpoint, '//')[1], ':')[0]
output topicName string = topic.name
