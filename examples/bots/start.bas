' The front desk: greets the person by name and offers a menu.
' The start dialog of a bot: it runs when someone first writes to the bot.
TALK "Hello! I am the front desk bot of Example Ltd."
INPUT "What is your name?", person
choice = ""
DO
  TALK "How can I help you, ${person}?"
  TALK "1. Opening hours"
  TALK "2. Register an expense"
  TALK "3. Goodbye"
  HEAR choice AS "Opening hours", "Register an expense", "Goodbye"
  SELECT CASE choice
    CASE "Opening hours"
      TALK "We are open Monday to Friday, 9:00 to 18:00."
    CASE "Register an expense"
      GO TO "expense"
  END SELECT
LOOP UNTIL choice <> "Opening hours"
TALK "Goodbye, ${person}!"
