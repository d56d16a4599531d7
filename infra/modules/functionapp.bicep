// The Function App on the Flex Consumption plan (FC1, Linux, Python 3.13) with a
// system-assigned managed identity. Deployment storage is read with that identity, and
// every app setting is passed in by main.bicep (identity-based connections only).

@description('Azure region for the plan and the app.')
param location string

@description('Name of the Flex Consumption plan.')
param planName string

@description('Name of the Function App (its default host is <name>.azurewebsites.net).')
param appName string

@description('Blob container URL the platform reads the deployment package from.')
param deploymentContainerUrl string

@description('App settings as an object: name -> value. No secrets belong here.')
param appSettings object

@description('Upper bound on instances the plan scales out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory of each instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Concurrent HTTP invocations one instance serves (a waiting POST mostly sleeps); settings.HTTP_CONCURRENCY.')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = 16

@description('Log Analytics workspace that receives FunctionAppLogs.')
param workspaceId string

@description('Send FunctionAppLogs to Log Analytics through a diagnostic setting.')
param enableDiagnosticSettings bool = true

@description('Tags applied to every resource; azd finds the app by its azd-service-name tag.')
param tags object = {}

@description('Tags applied to the Function App alone.')
param appTags object = {}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  //checkov:skip=CKV_AZURE_225:Flex zone redundancy is offered in few regions; set zoneRedundant where the region has it.
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  name: appName
  location: location
  tags: union(tags, appTags)
  kind: 'functionapp,linux'
  //checkov:skip=CKV_AZURE_17:Client certificates are not used; HTTP callers present a function key.
  //checkov:skip=CKV_AZURE_222:No VNet here, so the public endpoint is how callers reach the API.
  identity: {
    type: 'SystemAssigned'
  }
  //checkov:skip=CKV_AZURE_78:Flex Consumption has no FTP endpoint and rejects ftpsState (a deprecated property there).
  //checkov:skip=CKV_AZURE_212:Flex Consumption scales to zero by design; always-ready instances would bill while idle.
  //checkov:skip=CKV_AZURE_213:No health-check path: Flex has no instance rotation to drive, and pings would keep it billed.
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
      http20Enabled: true
      appSettings: [
        for setting in items(appSettings): {
          name: setting.key
          value: setting.value
        }
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
        // Python's default is 1: each long-polling POST would hold an instance to itself.
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'python'
        // 3.13: the worker library the platform runs for it (azure-functions-runtime) is the one
        // tests/test_worker_runtime.py indexes and invokes this app with.
        version: '3.13'
      }
    }
  }
}

resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (enableDiagnosticSettings) {
  name: 'to-log-analytics'
  scope: app
  properties: {
    workspaceId: workspaceId
    logs: [
      {
        category: 'FunctionAppLogs'
        enabled: true
      }
    ]
  }
}

output name string = app.name
output principalId string = app.identity.principalId
output defaultHostName string = app.properties.defaultHostName
