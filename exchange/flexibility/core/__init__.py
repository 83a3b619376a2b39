"""The pure flexibility core: no I/O, no clock reads; integers only."""

from .activation import instructions_for, largest_remainder, split_activation
from .delivery import DeliveryRecord, baseline_between, check_interval, pool_shortfall_wh
from .event import Activation, CoreError, FlexConfig, FlexEvent, Invitation
from .model import (
    CHECK_US, PPM, SLOT_US, Bid, DeliveryKind, Direction, Instruction, MemberHistory, NoBid, Offer, Policy, Portion,
    ProductRules, Share, ShareRule, SplitRule,
)
from .pooling import Allocation, allocate, build_bids, merit_order
from .ranking import Ranked, RankingWeights, rank
from .sharing import Participant, share_revenue
from .viability import Viability, assess, flexibility_wh

__all__ = [
    "CHECK_US", "PPM", "SLOT_US", "Activation", "Allocation", "Bid", "CoreError", "DeliveryKind", "DeliveryRecord",
    "Direction", "FlexConfig", "FlexEvent", "Instruction", "Invitation", "MemberHistory", "NoBid", "Offer",
    "Participant", "Policy", "Portion", "ProductRules", "Ranked", "RankingWeights", "Share", "ShareRule", "SplitRule",
    "Viability", "allocate", "assess", "baseline_between", "build_bids", "check_interval", "flexibility_wh",
    "instructions_for", "largest_remainder", "merit_order", "pool_shortfall_wh", "rank", "share_revenue",
    "split_activation",
]
