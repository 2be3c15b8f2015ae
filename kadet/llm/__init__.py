"""Small causal language models (the generator, the query-likelihood teacher) and the query types'
prompt templates. Imports the kit and the core."""
