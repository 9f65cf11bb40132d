"""Prompts built from separately tokenized segments, so the query's tokens are identical in every setting.

A prompt is [bos] + [instruction + sep] + (demo_i + sep)* + query, where demo = query_text + answer.
Each token carries a role (ROLES), so analyses can pick out demonstration, label or query tokens.
"""

from iclft.prompts.build import ROLES, Prompt, PromptBuilder
from iclft.prompts.select import Embedder, corrupt_labels, select_demos

__all__ = ["ROLES", "Prompt", "PromptBuilder", "Embedder", "corrupt_labels", "select_demos"]
