// Alerts on the two things that need a person:
//   - messages Service Bus gave up on: dead-lettered after maxDeliveryCount failed deliveries,
//     or expired unread (a server down or far behind for longer than the message TTL);
//   - function invocations that failed (a batch, a tick or an HTTP call that raised; a 4xx
//     answer to bad input is not a failure).
// Each alert fires in the portal; with an e-mail address it also notifies through an action group.

@description('Azure region for the log search alert (metric alerts and action groups are global).')
param location string

@description('Service Bus namespace whose dead-lettered messages are watched.')
param serviceBusNamespaceName string

@description('Application Insights component whose failed invocations are watched.')
param appInsightsName string

@description('Dead-lettered messages (the most held at once, across the namespace) above which the alert fires.')
@minValue(0)
param deadLetterThreshold int = 0

@description('E-mail address to notify; empty to only show alerts in the portal.')
param alertEmail string = ''

@description('Tags applied to every resource.')
param tags object = {}

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' existing = {
  name: serviceBusNamespaceName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: '${serviceBusNamespaceName}-operators'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'raftops'
    enabled: true
    emailReceivers: [
      {
        name: 'operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

var actionGroupIds = empty(alertEmail) ? [] : [actionGroup.id]

resource deadLettered 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: '${serviceBusNamespaceName}-dead-lettered'
  location: 'global'
  tags: tags
  properties: {
    description: 'Raft messages were dead-lettered: a delivery failed maxDeliveryCount times, or a message expired unread. See docs/deploy.md, "Alerts".'
    severity: 2
    enabled: true
    scopes: [
      namespace.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'deadLetteredMessages'
          metricNamespace: 'Microsoft.ServiceBus/namespaces'
          metricName: 'DeadletteredMessages'
          operator: 'GreaterThan'
          threshold: deadLetterThreshold
          timeAggregation: 'Maximum'
        }
      ]
    }
    autoMitigate: true
    actions: [
      for id in actionGroupIds: {
        actionGroupId: id
      }
    ]
  }
}

resource failedInvocations 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: '${appInsightsName}-failed-invocations'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Raft function invocations failed'
    description: 'A Service Bus batch, timer tick or HTTP call raised (HTTP 4xx answers to bad input are not counted). See docs/deploy.md, "Alerts".'
    severity: 1
    enabled: true
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    scopes: [
      appInsights.id
    ]
    criteria: {
      allOf: [
        {
          query: 'requests | where success == false | where isnull(toint(resultCode)) or toint(resultCode) !between (400 .. 499)'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actionGroupIds
    }
  }
}

output alertNames array = [
  deadLettered.name
  failedInvocations.name
]
