"""MT-bench style evaluation: answers, LLM-as-judge judgments, results, in FastChat's file formats."""
