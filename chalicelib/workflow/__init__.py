"""The recovery chain: the workflow as data, the DynamoDB ledger, the runners and the steps."""
