"""Wire formats: msgspec Structs for every API omniserve speaks. No behaviour lives here."""
