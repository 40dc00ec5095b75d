"""`sim`: a continuous-batching vLLM simulator with a roofline cost model, served over the OpenAI API."""
