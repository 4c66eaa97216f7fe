"""Policy as code: the controls (rules), the CrossGuard pack built from them, and the compliance report."""
