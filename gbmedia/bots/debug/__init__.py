"""The remote debugger of GB BASIC dialogs: debug runs, breakpoints, stepping, refactoring."""
