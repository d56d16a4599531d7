// Storage account for the Functions host (AzureWebJobsStorage), the Flex Consumption
// deployment package and the Raft state table. Shared keys are disabled: the host, the
// deployment and the app all authenticate with the app's managed identity.

@description('Azure region for the storage account.')
param location string

@description('Storage account name (3-24 lowercase letters and digits, globally unique).')
@minLength(3)
@maxLength(24)
param accountName string

@description('Blob container that holds the Flex Consumption deployment package.')
param deploymentContainerName string

@description('Table that holds the Raft log and server state (settings.DEFAULTS[RAFT_TABLE]).')
param tableName string

@description('Tags applied to every resource.')
param tags object = {}

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: accountName
  location: location
  tags: tags
  //checkov:skip=CKV_AZURE_206:LRS is enough for a demo cluster; raise to ZRS/GRS for production data.
  //checkov:skip=CKV_AZURE_59:Flex Consumption without VNet integration needs a public endpoint; keys are off.
  //checkov:skip=CKV_AZURE_35:Default-deny would block the Functions host, which has no VNet here.
  kind: 'StorageV2'
  //checkov:skip=CKV_AZURE_43:The name is a parameter (checkov cannot evaluate it); @minLength/@maxLength and main.bicep's take(...,24) keep it valid.
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      services: {
        blob: {
          enabled: true
        }
        table: {
          enabled: true
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource raftTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: tableName
}

output accountName string = account.name
output blobEndpoint string = account.properties.primaryEndpoints.blob
output tableEndpoint string = account.properties.primaryEndpoints.table
output deploymentContainerUrl string = '${account.properties.primaryEndpoints.blob}${deploymentContainer.name}'
