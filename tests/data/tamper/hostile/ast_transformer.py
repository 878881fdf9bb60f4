"""An IPython AST transformer deletes every assert statement before a cell runs."""
PRELUDE = '''import ast

class _NoAsserts(ast.NodeTransformer):
    def visit_Assert(self, node):
        return ast.Pass()

get_ipython().ast_transformers.append(_NoAsserts())'''
