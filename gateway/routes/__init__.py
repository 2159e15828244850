"""HTTP routes: thin handlers that parse, delegate and render."""
