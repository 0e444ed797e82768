"""Sales channels: platform connectors, inbound orders, outbound availability sync.

Each platform module (shopify, amazon, ebay, etsy, webhook) holds one Connector: it
verifies and parses what the platform sends us, fetches orders, and pushes quantities.
`sim/` holds a local simulator per platform that speaks the same documented contract.
"""
