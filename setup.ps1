#Requires -Version 7.0
# PowerShell 7 (pwsh) only: Windows PowerShell 5.1's Compress-Archive writes backslash paths
# into the zip, which the Linux remote build cannot unpack.
<#
.SYNOPSIS
    Deploys Raft on Azure Functions: resource group, infra/main.bicep, then the app code.

.DESCRIPTION
    Creates (or reuses) a resource group, deploys infra/main.bicep into it (a Service Bus topic
    with one subscription per server, a storage account, Application Insights and a Function App
    on the Flex Consumption plan, all identity-based), publishes the Python app, and prints the
    HTTP endpoint and the values a developer needs to run against the real namespace.

    Role assignments take a few minutes to reach every service, so publishing, which the new
    identity's roles make possible, is retried with a bounded back-off (6 attempts, about three
    minutes in all) before the script gives up.

    With -WhatIf nothing is changed: the script runs `az deployment group what-if` and stops.

.EXAMPLE
    pwsh ./setup.ps1 -ResourceGroup raft-rg -Location swedencentral -ClusterSize 5

.EXAMPLE
    pwsh ./setup.ps1 -ResourceGroup raft-rg -Location swedencentral -WhatIf
#>
[CmdletBinding()]
param(
    # Resource group to create or reuse.
    [string] $ResourceGroup = 'RaftOnFunctionsRG',

    # Azure region; it must offer the Flex Consumption plan
    # (az functionapp list-flexconsumption-locations).
    [string] $Location = 'swedencentral',

    # Prefix for resource names: 3-12 lowercase letters and digits, starting with a letter.
    [ValidatePattern('^[a-z][a-z0-9]{2,11}$')]
    [string] $NamePrefix = 'raft',

    # Number of Raft servers (Service Bus subscriptions server-1 .. server-N).
    [ValidateSet(3, 5, 7)]
    [int] $ClusterSize = 5,

    # Also grant the signed-in user (or service principal) the data roles for local runs
    # against the real namespace.
    [switch] $GrantDeveloperAccess,

    # E-mail address the alerts (dead-lettered messages, failed invocations) notify.
    [string] $AlertEmail = '',

    # Show what the deployment would change (az deployment group what-if) and change nothing.
    [switch] $WhatIf
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$RepoRoot = $PSScriptRoot
$Template = Join-Path $RepoRoot 'infra/main.bicep'

function Invoke-Az {
    # Runs one az command; throws with the command line when it exits non-zero.
    param([Parameter(Mandatory)] [string[]] $Arguments)
    $output = & az @Arguments
    if ($LASTEXITCODE -ne 0) {
        throw "az $($Arguments -join ' ') failed with exit code $LASTEXITCODE"
    }
    return $output
}

function Assert-AzureCli {
    if (-not (Get-Command az -ErrorAction SilentlyContinue)) {
        throw 'The Azure CLI (az) is not on PATH. Install it (https://aka.ms/installazurecli), run "az login", then run this script again.'
    }
    # Windows PowerShell turns a native command's stderr into errors under 'Stop'; only the
    # exit code matters here.
    $ErrorActionPreference = 'Continue'
    $null = & az account show --output none 2>$null
    $loggedIn = ($LASTEXITCODE -eq 0)
    $ErrorActionPreference = 'Stop'
    if (-not $loggedIn) {
        throw 'The Azure CLI is not logged in. Run "az login" (and "az account set --subscription <id>" to pick a subscription), then run this script again.'
    }
    $account = Invoke-Az @('account', 'show', '--query', '{name:name, id:id}', '--output', 'json') | ConvertFrom-Json
    Write-Host "Using subscription '$($account.name)' ($($account.id))."
}

function Get-SignedInPrincipal {
    # The object id and principal type of whoever az is signed in as: a user, or a service
    # principal (CI), whose role assignments must say so or ARM refuses them.
    $type = (Invoke-Az @('account', 'show', '--query', 'user.type', '--output', 'tsv') | Out-String).Trim()
    if ($type -eq 'servicePrincipal') {
        $appId = (Invoke-Az @('account', 'show', '--query', 'user.name', '--output', 'tsv') | Out-String).Trim()
        $id = Invoke-Az @('ad', 'sp', 'show', '--id', $appId, '--query', 'id', '--output', 'tsv')
        return [pscustomobject]@{ Id = ($id | Out-String).Trim(); Type = 'ServicePrincipal' }
    }
    $id = Invoke-Az @('ad', 'signed-in-user', 'show', '--query', 'id', '--output', 'tsv')
    return [pscustomobject]@{ Id = ($id | Out-String).Trim(); Type = 'User' }
}

function Invoke-WithRetry {
    # Runs $Action until it succeeds, at most $Attempts times, waiting twice as long after each
    # failure (from $FirstDelaySeconds, at most $MaxDelaySeconds); rethrows the last failure.
    param(
        [Parameter(Mandatory)] [string] $What,
        [Parameter(Mandatory)] [scriptblock] $Action,
        [ValidateRange(1, 10)] [int] $Attempts = 6,
        [ValidateRange(1, 300)] [int] $FirstDelaySeconds = 10,
        [ValidateRange(1, 300)] [int] $MaxDelaySeconds = 60
    )
    $delay = $FirstDelaySeconds
    for ($attempt = 1; ; $attempt++) {
        try {
            return & $Action
        }
        catch {
            if ($attempt -ge $Attempts) {
                throw "$What failed $Attempts times; the last error: $_"
            }
            Write-Host "$What failed (attempt $attempt of $Attempts): $_"
            Write-Host "Role assignments can take minutes to propagate; retrying in $delay s..."
            Start-Sleep -Seconds $delay
            $delay = [Math]::Min(2 * $delay, $MaxDelaySeconds)
        }
    }
}

function New-ResourceGroupIfMissing {
    param([string] $Name, [string] $Region)
    $exists = (Invoke-Az @('group', 'exists', '--name', $Name) | Out-String).Trim()
    if ($exists -eq 'true') {
        Write-Host "Resource group '$Name' exists; reusing it."
        return
    }
    Write-Host "Creating resource group '$Name' in $Region..."
    $null = Invoke-Az @('group', 'create', '--name', $Name, '--location', $Region, '--output', 'none')
}

function Get-DeploymentParameters {
    param($Developer)
    $parameters = @(
        "namePrefix=$NamePrefix",
        "location=$Location",
        "clusterSize=$ClusterSize"
    )
    if ($Developer) {
        $parameters += "developerPrincipalId=$($Developer.Id)"
        $parameters += "developerPrincipalType=$($Developer.Type)"
    }
    if ($AlertEmail) {
        $parameters += "alertEmail=$AlertEmail"
    }
    return $parameters
}

function Show-WhatIf {
    param([string[]] $Parameters)
    Write-Host 'What-if only: nothing will be changed.'
    $null = Invoke-Az (@('deployment', 'group', 'what-if', '--resource-group', $ResourceGroup,
            '--template-file', $Template, '--parameters') + $Parameters)
}

function Invoke-Deployment {
    param([string[]] $Parameters)
    Write-Host "Deploying $Template (cluster of $ClusterSize)..."
    $json = Invoke-Az (@('deployment', 'group', 'create', '--resource-group', $ResourceGroup,
            '--name', 'raft-on-functions', '--template-file', $Template,
            '--query', 'properties.outputs', '--output', 'json', '--parameters') + $Parameters)
    $outputs = ($json | Out-String) | ConvertFrom-Json
    return [pscustomobject]@{
        FunctionAppName     = $outputs.functionAppName.value
        HttpEndpoint        = $outputs.httpEndpoint.value
        ServiceBusNamespace = $outputs.serviceBusNamespace.value
        StorageAccountName  = $outputs.storageAccountName.value
        TableServiceUri     = $outputs.tableServiceUri.value
        TopicName           = $outputs.topicName.value
    }
}

function New-AppPackage {
    # A zip of what the Functions host runs; the platform installs requirements.txt (remote build).
    $items = @('function_app.py', 'host.json', 'requirements.txt', 'raft') |
        ForEach-Object { Join-Path $RepoRoot $_ }
    foreach ($item in $items) {
        if (-not (Test-Path $item)) {
            throw "Cannot package the app: $item is missing."
        }
    }
    $zip = Join-Path ([System.IO.Path]::GetTempPath()) "raft-app-$([guid]::NewGuid()).zip"
    Compress-Archive -Path $items -DestinationPath $zip
    return $zip
}

function Publish-App {
    param([string] $AppName)
    if (Get-Command func -ErrorAction SilentlyContinue) {
        Write-Host "Publishing with Azure Functions Core Tools to '$AppName'..."
        Push-Location $RepoRoot
        try {
            & func azure functionapp publish $AppName --python
            if ($LASTEXITCODE -ne 0) {
                throw "func azure functionapp publish failed with exit code $LASTEXITCODE"
            }
        }
        finally {
            Pop-Location
        }
        return
    }
    Write-Host "Core Tools (func) not found; zip-deploying to '$AppName' with a remote build..."
    $zip = New-AppPackage
    try {
        $null = Invoke-Az @('functionapp', 'deployment', 'source', 'config-zip',
            '--resource-group', $ResourceGroup, '--name', $AppName,
            '--src', $zip, '--build-remote', 'true', '--output', 'none')
    }
    finally {
        Remove-Item $zip -ErrorAction SilentlyContinue
    }
}

function Write-Summary {
    param($Deployment)
    $name = $Deployment.FunctionAppName
    Write-Host ''
    Write-Host "HTTP endpoint: $($Deployment.HttpEndpoint)"
    Write-Host ''
    Write-Host 'Function key (send it as the x-functions-key header or ?code=...):'
    Write-Host "  az functionapp keys list --resource-group $ResourceGroup --name $name --query functionKeys.default --output tsv"
    Write-Host ''
    Write-Host 'For local runs against the real namespace, put these in local.settings.json (Values):'
    Write-Host "  ServiceBusConnection__fullyQualifiedNamespace = $($Deployment.ServiceBusNamespace)"
    Write-Host "  RaftStorage__tableServiceUri                  = $($Deployment.TableServiceUri)"
    Write-Host "  RAFT_SERVER_COUNT                             = $ClusterSize"
    Write-Host ''
    if ($GrantDeveloperAccess) {
        Write-Host "You ($($developer.Type)) were granted the data roles by the deployment (developerRoles)."
        return
    }
    Write-Host 'Your own user needs data roles too (or rerun with -GrantDeveloperAccess):'
    $scopeBase = "$(Invoke-Az @('group', 'show', '--name', $ResourceGroup, '--query', 'id', '--output', 'tsv'))".Trim()
    $ns = $Deployment.ServiceBusNamespace.Split('.')[0]
    $topicScope = "$scopeBase/providers/Microsoft.ServiceBus/namespaces/$ns/topics/$($Deployment.TopicName)"
    $storageScope = "$scopeBase/providers/Microsoft.Storage/storageAccounts/$($Deployment.StorageAccountName)"
    Write-Host '  $me = az ad signed-in-user show --query id --output tsv'
    Write-Host "  az role assignment create --assignee-object-id `$me --assignee-principal-type User --role 'Azure Service Bus Data Sender' --scope $topicScope"
    Write-Host "  az role assignment create --assignee-object-id `$me --assignee-principal-type User --role 'Azure Service Bus Data Receiver' --scope $topicScope/subscriptions/server-1   # repeat for server-2..server-$ClusterSize"
    Write-Host "  az role assignment create --assignee-object-id `$me --assignee-principal-type User --role 'Storage Table Data Contributor' --scope $storageScope"
}

Assert-AzureCli
$developer = if ($GrantDeveloperAccess) { Get-SignedInPrincipal } else { $null }
$parameters = Get-DeploymentParameters -Developer $developer

if ($WhatIf) {
    $exists = (Invoke-Az @('group', 'exists', '--name', $ResourceGroup) | Out-String).Trim()
    if ($exists -ne 'true') {
        Write-Host "Resource group '$ResourceGroup' does not exist; it would be created in $Location."
        Write-Host 'What-if needs an existing group, so create it first (az group create) to preview the template.'
        return
    }
    Show-WhatIf -Parameters $parameters
    return
}

New-ResourceGroupIfMissing -Name $ResourceGroup -Region $Location
$deployment = Invoke-Deployment -Parameters $parameters
# The app's identity got its roles moments ago (the deployment package is read with them).
Invoke-WithRetry -What 'Publishing the app' -Action { Publish-App -AppName $deployment.FunctionAppName }
Write-Summary -Deployment $deployment
