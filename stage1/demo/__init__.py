"""The quickstart (``stage1/quickstart.py``): every phase end to end on a tiny dataset. The one
package that drives all the others."""
