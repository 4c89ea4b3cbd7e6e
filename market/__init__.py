"""moe-market client side: what a client needs to find, pay and check experts.

The node package imports this one, never the reverse.
"""

from market.errors import MarketError

__all__ = ["MarketError"]
