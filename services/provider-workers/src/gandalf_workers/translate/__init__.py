"""Pure translations between the OpenAI wire format and the providers' own."""
