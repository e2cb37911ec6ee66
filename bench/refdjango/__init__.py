"""The empty Django reference: one async view, no middleware, no database."""
