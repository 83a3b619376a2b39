"""The pure flexibility core: no I/O, no clock reads; integers only."""

from exchange.flexibility.core.activation import instructions_for, largest_remainder, split_activation
from exchange.flexibility.core.delivery import DeliveryRecord, baseline_between, check_interval, pool_shortfall_wh
from exchange.flexibility.core.event import Activation, CoreError, FlexConfig, FlexEvent, Invitation
from exchange.flexibility.core.model import (
    CHECK_US,
    PPM,
    SLOT_US,
    Bid,
    DeliveryKind,
    Direction,
    Instruction,
    MemberHistory,
    NoBid,
    Offer,
    Policy,
    Portion,
    ProductRules,
    Share,
    ShareRule,
    SplitRule,
)
from exchange.flexibility.core.pooling import Allocation, allocate, build_bids, merit_order
from exchange.flexibility.core.ranking import Ranked, RankingWeights, rank
from exchange.flexibility.core.sharing import Participant, share_revenue
from exchange.flexibility.core.viability import Viability, assess, flexibility_wh

__all__ = [
    "CHECK_US", "PPM", "SLOT_US", "Activation", "Allocation", "Bid", "CoreError", "DeliveryKind", "DeliveryRecord",
    "Direction", "FlexConfig", "FlexEvent", "Instruction", "Invitation", "MemberHistory", "NoBid", "Offer",
    "Participant", "Policy", "Portion", "ProductRules", "Ranked", "RankingWeights", "Share", "ShareRule", "SplitRule",
    "Viability", "allocate", "assess", "baseline_between", "build_bids", "check_interval", "flexibility_wh",
    "instructions_for", "largest_remainder", "merit_order", "pool_shortfall_wh", "rank", "share_revenue",
    "split_activation",
]
