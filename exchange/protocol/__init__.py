"""The wire contract shared by the gateway and every client: peer messages (pydantic),
EIP-191/EIP-712 signing, the catalogue of error codes. Pure: no I/O."""
