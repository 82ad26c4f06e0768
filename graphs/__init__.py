"""Ready-made LangGraph graphs backed by MemOS."""
