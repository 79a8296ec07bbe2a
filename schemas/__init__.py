"""The one definition of every record Forma reads or writes."""

from schemas.conversation import Conversation, Role, Turn
from schemas.knowledge import Category, Fact, KnowledgeFile, Quantity, Source
from schemas.recipe import Recipe
from schemas.sample import Lineage, Reject, Sample

__all__ = ["Category", "Conversation", "Fact", "KnowledgeFile", "Lineage", "Quantity", "Recipe", "Reject", "Role",
           "Sample", "Source", "Turn"]
