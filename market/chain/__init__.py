"""The chain bindings of moe-market: the only package that imports web3 or eth_account.

    artifacts   ABI + bytecode of the contracts shipped in the package (`python -m market.chain.artifacts`)
    eip712      fast EIP-712 vouchers and receipts (sign, recover, digests)
    errors      revert data -> ContractRevertError(name, args); web3 failures -> ChainError
    signer      the account seam: keystore, throwaway hex keys
    params      MarketParams: constructor parameters and their profiles
    records     frozen views and events returned by MarketChain
    contracts   MarketChain: the blocking client of registry, escrow and dispute manager
    deployment  the deployment file (where the market lives)
    deploy      deploy_market: the contracts onto any EVM chain
    devnet      anvil with the market deployed, for demos and tests

Submodules are imported on use (nothing is imported here) so that `import market.chain.eip712` stays cheap.
"""
