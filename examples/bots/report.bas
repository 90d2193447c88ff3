' A scheduled report: every weekday at 8:00 it sums the expenses registered so far.
' On a node it runs with no user and its TALK goes to the instance's log.
SET SCHEDULE "0 8 * * 1-5"
INCLUDE "expense_table"
rows = FIND "expenses", "id>0"
IF ISEMPTY(rows) THEN
  TALK "Expense report: nothing registered."
  END
END IF
IF NOT ISARRAY(rows) THEN rows = [rows]
total = 0
FOR EACH row IN rows
  total = total + row.amount
NEXT
TALK "Expense report: ${UBOUND(rows)} expense(s), ${FORMAT(total, "#,##0.00")} in all."
FOR EACH row IN rows
  TALK "- ${row.spent_on} ${row.email}: ${FORMAT(row.amount, "#,##0.00")} (${row.note})"
NEXT
