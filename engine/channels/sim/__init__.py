"""Local platform simulators: each speaks the subset of one platform's documented
contract that stockguard uses (channel-apis.md), enforces its rate limits, injects
faults on request, and runs a storefront that takes orders against the quantity last
pushed to it and tells us about them the way the platform does.
"""
