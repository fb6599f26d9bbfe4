"""OpenAI tool calling: the request, the template's family, the prompt, the grammar, the parse.

request.py validates `tools`/`tool_choice` (and the legacy `functions`/`function_call`); family.py
tells from a chat template's text how its model writes calls; render.py builds the prompt with the
model's own template; constraint.py makes the llguidance grammar that enforces `tool_choice` and
each tool's schema; parse.py turns the generated text back into calls, as it streams.
"""
