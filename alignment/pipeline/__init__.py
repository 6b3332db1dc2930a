"""The runner that chains the stages into the iterated Llama 2-Chat pipeline, and its report."""
