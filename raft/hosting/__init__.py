"""Host configuration shared by the Functions app, the local runner and the infrastructure."""
