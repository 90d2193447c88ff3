' A form: asks for an expense, checks each answer, saves it in the bot's table.
' HEAR re-asks on its own when an answer does not fit its kind.
INCLUDE "expense_table"

TALK "Let us register your expense."
INPUT "Your e-mail?", email AS EMAIL
INPUT "When did you spend it? (like 12/31/2026)", spent_on AS DATE
INPUT "How much was it?", amount AS MONEY
IF amount <= 0 THEN
  TALK "An expense must be more than zero; nothing was saved."
  END
END IF
INPUT "What was it for?", note
SAVE "expenses", email, spent_on, amount, note
saved = FIND "expenses", "email=" & email
IF ISARRAY(saved) THEN count = UBOUND(saved) ELSE count = 1
TALK "Saved: ${FORMAT(amount, "#,##0.00")} on ${spent_on}. You have ${count} expense(s) registered."
